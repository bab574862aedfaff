//! Learns cgroups as they are created, from inotify on the cgroup v2 tree.
//!
//! A record names its process's group by id, and the id is looked up when
//! the record is written. A container that ran for less time than the
//! writer's backlog (a flood, a slow sink, a loaded machine) has had its
//! group removed by then: a scan cannot find it, and the record would lack
//! its container. A group known from its creation stays known (see
//! [`CgroupIndex::rescan`]). The scans on a miss remain for what the watch
//! cannot see: groups created before it started, or while its queue
//! overflowed.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use notify::{EventKind, RecursiveMode, Watcher as _};

use super::CgroupIndex;

/// Keeps the watch running; dropping it stops it.
#[derive(Debug)]
pub struct CgroupWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `index`'s tree (nothing to watch without one: `None`).
/// A watch per group directory (inotify's `max_user_watches` bounds them).
pub fn start(index: &Arc<Mutex<CgroupIndex>>) -> notify::Result<Option<CgroupWatch>> {
    let Some(mount) = lock(index).mount().map(Path::to_path_buf) else {
        return Ok(None);
    };
    let learner = Arc::clone(index);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if matches!(event.kind, EventKind::Create(_)) => {
                let mut index = lock(&learner);
                // The watch on a new directory starts after it was made:
                // groups made in it before then (a runtime makes a pod's or
                // a test's parent group and the container's at once) raised
                // no event of their own, and are read here.
                for path in &event.paths {
                    index.add_tree(path);
                }
            }
            Ok(_) => {}
            // An overflowed queue: the groups it lost are found by a scan
            // when their first record comes.
            Err(error) => tracing::debug!(%error, "cgroup watch"),
        })?;
    watcher.watch(&mount, RecursiveMode::Recursive)?;
    Ok(Some(CgroupWatch { _watcher: watcher }))
}

fn lock(index: &Mutex<CgroupIndex>) -> std::sync::MutexGuard<'_, CgroupIndex> {
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, time::Duration};

    use super::*;

    #[test]
    fn a_group_created_and_removed_between_scans_stays_known() {
        let mount =
            std::env::temp_dir().join(format!("enforcer-cgroup-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mount);
        std::fs::create_dir_all(mount.join("machine.slice")).unwrap();
        let index = Arc::new(Mutex::new(CgroupIndex::new(Some(mount.clone()))));
        let _watch = start(&index).unwrap().expect("a tree to watch");
        let id = "a".repeat(64);
        // A parent and its child made at once, as a runtime makes a pod's
        // group and its container's: the child raises no event of its own
        // when it is made before the watch on its parent is in place.
        let group = mount.join(format!("machine.slice/pod.slice/libpod-{id}.scope"));
        std::fs::create_dir_all(&group).unwrap();
        let ino = std::fs::metadata(&group).unwrap().ino();
        // Known once the watch has seen it, without a scan; then removed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lock(&index).paths.contains_key(&ino) {
            assert!(
                std::time::Instant::now() < deadline,
                "the watch never saw the group"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir(&group).unwrap();
        std::fs::remove_dir(group.parent().unwrap()).unwrap();
        let container = lock(&index).container(ino).expect("the container");
        assert_eq!(container.id, id);
        std::fs::remove_dir_all(&mount).unwrap();
    }
}
