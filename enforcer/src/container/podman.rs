//! Podman's containers from its storage (containers/storage): the container
//! records in `overlay-containers/containers.json` and the image records in
//! `overlay-images/images.json`. Reading the files needs no Podman service,
//! and Podman writes the container's record before its cgroup exists, so a
//! container found by its cgroup is always there.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

use super::{ContainerInfo, Runtime, image::ImageRef};

/// Podman's default storage root for root (`graphroot`).
pub const DEFAULT_STORAGE: &str = "/var/lib/containers/storage";

#[derive(Debug, Deserialize)]
struct ContainerRecord {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    /// A JSON document in a string: `image-name`, `name`, ...
    #[serde(default)]
    metadata: String,
}

#[derive(Debug, Default, Deserialize)]
struct ContainerMetadata {
    #[serde(rename = "image-name", default)]
    image_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageRecord {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not what containers/storage writes: {what}")]
    Parse { path: PathBuf, what: String },
}

/// The containers of one storage root, by id. Pure.
///
/// # Errors
/// Either document is not what containers/storage writes.
pub fn parse(containers: &str, images: &str) -> Result<HashMap<String, ContainerInfo>, String> {
    let containers: Vec<ContainerRecord> =
        serde_json::from_str(containers).map_err(|error| format!("containers: {error}"))?;
    let images: Vec<ImageRecord> = if images.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(images).map_err(|error| format!("images: {error}"))?
    };
    let images: HashMap<&str, &ImageRecord> = images
        .iter()
        .map(|image| (image.id.as_str(), image))
        .collect();
    Ok(containers
        .into_iter()
        .map(|record| {
            let metadata: ContainerMetadata =
                serde_json::from_str(&record.metadata).unwrap_or_default();
            let stored = images.get(record.image.as_str());
            let reference = metadata
                .image_name
                .or_else(|| stored.and_then(|image| image.names.first().cloned()));
            let image = reference
                .as_deref()
                .and_then(ImageRef::parse)
                .or_else(|| {
                    // An image without a name: known by its id only.
                    (!record.image.is_empty()).then(|| ImageRef {
                        name: record.image.clone(),
                        ..ImageRef::default()
                    })
                })
                .map(|mut image| {
                    if image.digest.is_none() {
                        image.digest = stored.and_then(|stored| stored.digest.clone());
                    }
                    image.id = (!record.image.is_empty()).then(|| record.image.clone());
                    image
                });
            let info = ContainerInfo {
                id: record.id.clone(),
                name: metadata.name.or_else(|| record.names.first().cloned()),
                runtime: Runtime::Podman,
                image,
                pod: None,
                init_pid: None,
            };
            (record.id, info)
        })
        .collect())
}

/// Podman's storage, read again when its files change.
#[derive(Debug)]
pub struct PodmanStore {
    root: PathBuf,
    read_at: Option<(Option<SystemTime>, Option<SystemTime>)>,
    containers: HashMap<String, ContainerInfo>,
}

impl PodmanStore {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            read_at: None,
            containers: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn paths(&self) -> (PathBuf, PathBuf) {
        (
            self.root.join("overlay-containers/containers.json"),
            self.root.join("overlay-images/images.json"),
        )
    }

    /// Whether the files changed since they were last read.
    pub fn changed(&self) -> bool {
        let (containers, images) = self.paths();
        self.read_at != Some((modified(&containers), modified(&images)))
    }

    /// The container `id`, reading the files again if they changed. A store
    /// that does not exist holds no containers.
    ///
    /// # Errors
    /// A file that exists but cannot be read or parsed.
    pub fn get(&mut self, id: &str) -> Result<Option<ContainerInfo>, PodmanError> {
        if self.changed() {
            self.reload()?;
        }
        Ok(self.containers.get(id).cloned())
    }

    fn reload(&mut self) -> Result<(), PodmanError> {
        let (containers_path, images_path) = self.paths();
        let stamps = (modified(&containers_path), modified(&images_path));
        if stamps.0.is_none() {
            self.containers.clear();
            self.read_at = Some(stamps);
            return Ok(());
        }
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(PodmanError::Read {
                path: path.to_owned(),
                source,
            }),
        };
        let containers = read(&containers_path)?;
        let images = read(&images_path)?;
        self.containers = parse(&containers, &images).map_err(|what| PodmanError::Parse {
            path: self.root.clone(),
            what,
        })?;
        self.read_at = Some(stamps);
        Ok(())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Podman 4.3 wrote them for `podman run --name keep localhost/one:1`.
    const CONTAINERS: &str = r#"[{"id":"062c7fd3b5207dc188314feef5ad8ed1c434dbe33d45e36e0f0391b6f5ec3b5e","names":["keep"],"image":"eaddbb7067055998b0621beda06e9a384d819b3880d9d53816f78df87cbe9415","layer":"a52c2d6000f0641bca4216c6cc7bb88c1db20601bb473100a5a227cd118de7a7","metadata":"{\"image-name\":\"localhost/one:1\",\"image-id\":\"eaddbb7067055998b0621beda06e9a384d819b3880d9d53816f78df87cbe9415\",\"name\":\"keep\",\"created-at\":1795450198}","created":"2026-11-23T16:09:58.311811293Z","flags":{"MountLabel":"","ProcessLabel":""}}]"#;
    const IMAGES: &str = r#"[{"id":"eaddbb7067055998b0621beda06e9a384d819b3880d9d53816f78df87cbe9415","digest":"sha256:f02ad0054c67edc79f6d90f5ed9dd3361c086f1de6ecba780f95ca2a55983c0a","names":["localhost/one:1"],"names-history":["localhost/one:1"],"layer":"14f4571aa8acd6beb9c2a424ebd457002760b3e3fd9a8a0644edfac933fc3eea","created":"2026-11-23T16:08:46.087956097Z"}]"#;
    const ID: &str = "062c7fd3b5207dc188314feef5ad8ed1c434dbe33d45e36e0f0391b6f5ec3b5e";

    #[test]
    fn a_container_record_names_its_image_tag_and_digest() {
        let containers = parse(CONTAINERS, IMAGES).unwrap();
        let info = &containers[ID];
        assert_eq!(info.name.as_deref(), Some("keep"));
        assert_eq!(info.runtime, Runtime::Podman);
        let image = info.image.as_ref().unwrap();
        assert_eq!(image.name, "localhost/one");
        assert_eq!(image.tag.as_deref(), Some("1"));
        assert_eq!(
            image.digest.as_deref(),
            Some("sha256:f02ad0054c67edc79f6d90f5ed9dd3361c086f1de6ecba780f95ca2a55983c0a")
        );
        assert_eq!(
            image.id.as_deref(),
            Some("eaddbb7067055998b0621beda06e9a384d819b3880d9d53816f78df87cbe9415")
        );
    }

    #[test]
    fn an_image_removed_since_leaves_the_name_the_container_was_made_from() {
        let containers = parse(CONTAINERS, "[]").unwrap();
        let image = containers[ID].image.clone().unwrap();
        assert_eq!((image.name.as_str(), image.digest), ("localhost/one", None));
        assert!(parse("{", "[]").is_err());
    }

    #[test]
    fn the_store_is_read_from_its_files_and_again_when_they_change() {
        let dir = std::env::temp_dir().join(format!("enforcer-podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = Root(dir);
        let mut store = PodmanStore::new(root.path());
        assert_eq!(store.get(ID).unwrap(), None);
        std::fs::create_dir_all(root.path().join("overlay-containers")).unwrap();
        std::fs::create_dir_all(root.path().join("overlay-images")).unwrap();
        std::fs::write(root.path().join("overlay-images/images.json"), IMAGES).unwrap();
        std::fs::write(
            root.path().join("overlay-containers/containers.json"),
            CONTAINERS,
        )
        .unwrap();
        assert!(store.changed());
        assert_eq!(
            store.get(ID).unwrap().unwrap().name.as_deref(),
            Some("keep")
        );
        assert!(!store.changed());
    }

    struct Root(PathBuf);

    impl Root {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
