//! Enforcement that outlives the agent: what an agent pins stays in force
//! when it stops for any reason, the next agent takes over without a gap,
//! and only `enforcer unload` ends it. Runs on the host kernel (signal
//! backend) and, through `cargo xtask test`, inside VMs booted with BPF LSM
//! (lsm backend).

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use enforcer_tests::{
    agent::{self, Agent, PinDir},
    container::{self, Image, Run, Scratch},
    require::{self, Requirement, patience},
    scenario::DriftLoop,
    serial,
};

/// An image binary runs, then a copy of it dropped into the container.
const DROP_AND_RUN: &str = r#"
/bin/echo image-ok
cp /bin/busybox /tmp/busybox-dropped
/tmp/busybox-dropped echo dropped-ran
echo "dropped-rc=$?"
"#;

fn ran(run: &Run) -> bool {
    run.stdout.lines().any(|line| line == "dropped-ran")
}

/// How an agent stops.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Signal(libc::c_int),
    /// Killed by the kernel's OOM killer: a memory limit below what it
    /// uses, on a cgroup of its own.
    OutOfMemory,
}

/// After SIGKILL, SIGTERM and an OOM kill of the agent, a dropped binary is
/// still refused; `enforcer unload` removes what it pinned (and then finds
/// nothing: not an error), and the binary runs.
#[test]
fn enforcement_outlives_the_agent_until_unload() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = Image::busybox().expect("building the image");
    for stop in [
        Stop::Signal(libc::SIGKILL),
        Stop::Signal(libc::SIGTERM),
        Stop::OutOfMemory,
    ] {
        let agent = Agent::start(&[]).unwrap_or_else(|failure| panic!("{failure}"));
        let pid = agent.pid();
        let stopped = match stop {
            Stop::Signal(signal) => agent.stop_with(signal).expect("stopping the agent"),
            Stop::OutOfMemory => {
                let Some(limit) = MemoryLimit::on(pid) else {
                    require::unavailable(
                        Requirement::Cgroup2,
                        "no cgroup v2 memory controller on /sys/fs/cgroup: the OOM case is not run",
                    );
                    continue;
                };
                limit.squeeze();
                // What the agent allocated before the move stays charged
                // where it was: requests make it allocate, and the kernel
                // kills it at the first page or object charged here.
                for _ in 0..50 {
                    if limit.oom_killed() {
                        break;
                    }
                    let _ = Command::new(agent::binary())
                        .arg("status")
                        .arg("--socket")
                        .arg(agent.control_socket())
                        .output();
                    thread::sleep(Duration::from_millis(100));
                }
                let stopped = agent.wait_for_exit().expect("the agent exits");
                assert!(
                    limit.oom_killed(),
                    "the agent was not OOM-killed: {stopped:?}"
                );
                stopped
            }
        };
        let run = container::run(&image, DROP_AND_RUN).expect("running the container");
        assert!(
            run.stdout.contains("image-ok") && !ran(&run),
            "{stop:?}: drift ran with the agent gone: {run:#?}\n{}",
            stopped.stderr
        );
        let pins = stopped.pins.as_ref().expect("the harness's pin directory");
        let unloaded = pins.unload().expect("enforcer unload");
        let said = String::from_utf8_lossy(&unloaded.stdout);
        assert!(
            said.contains("removed ") && said.contains("unloaded: ") && unloaded.stderr.is_empty(),
            "{unloaded:?}"
        );
        let run = container::run(&image, DROP_AND_RUN).expect("running the container");
        assert!(
            ran(&run),
            "{stop:?}: still refused after unload: {run:#?}\n{said}\n{}",
            stopped.stderr
        );
        let again = pins.unload().expect("enforcer unload, nothing pinned");
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("nothing pinned"),
            "{again:?}"
        );
    }
}

/// A container tries a dropped binary in a loop while agents come and go
/// on one pin directory: killed, restarted (adopting the maps), stopped,
/// killed half-way through their start, and replaced by one that cannot
/// adopt the maps (as after an upgrade to another ABI). Not one try runs.
/// Then `enforcer unload`, and it runs.
#[test]
fn no_drift_runs_while_agents_hand_over() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let pins = PinDir::new();
    let pin_dir = pins.path().to_str().expect("a UTF-8 path").to_owned();
    let args = ["--pin-dir", pin_dir.as_str()];
    let shared = Scratch::new("handover").expect("a scratch directory");
    let image = Image::busybox().expect("building the image");
    let first = Agent::start(&args).unwrap_or_else(|failure| panic!("{failure}"));
    let looping = DriftLoop::start().expect("starting the loop");
    thread::sleep(patience(Duration::from_secs(1)));
    let log = |stopped: &agent::Stopped| stopped.stderr.clone();

    // Killed, then a restart that adopts what it left.
    let killed = first.stop_with(libc::SIGKILL).expect("killing the agent");
    thread::sleep(patience(Duration::from_millis(500)));
    let second = Agent::start(&args).unwrap_or_else(|failure| panic!("{failure}"));
    let second = second.stop().expect("stopping the agent");
    assert!(
        log(&second).contains("adopted_maps=true"),
        "{}\n{}",
        log(&killed),
        log(&second)
    );

    // Starts that die half-way leave the pinned generation in force.
    for delay in [200, 800, 2000] {
        let mut child = Command::new(agent::binary())
            .args(["run", "--pin-dir", &pin_dir, "--control-socket"])
            .arg(shared.path().join("half-way.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting an agent");
        thread::sleep(patience(Duration::from_millis(delay)));
        let _ = child.kill();
        let _ = child.wait();
    }

    // Maps of another layout: the next agent loads its own and replaces
    // the pinned generation, new links before the old ones go.
    let maps = maps_dir(pins.path());
    std::fs::rename(&maps, pins.path().join("maps-abi0-0000000000000000"))
        .expect("renaming the pinned maps");
    let third = Agent::start(&args).unwrap_or_else(|failure| panic!("{failure}"));
    let third = third.stop().expect("stopping the agent");
    assert!(
        log(&third).contains("adopted_maps=false") && log(&third).contains("maps-abi0-"),
        "{}",
        log(&third)
    );

    let outcome = looping.finish().expect("ending the loop");
    assert!(outcome.tries > 0, "{outcome:#?}");
    assert_eq!(outcome.ran, 0, "drift ran during a hand-over: {outcome:#?}");

    pins.unload().expect("enforcer unload");
    let run = container::run(&image, DROP_AND_RUN).expect("running the container");
    assert!(ran(&run), "still refused after unload: {run:#?}");
}

/// A map planted under a pinned map's name (here another of the agent's
/// own maps, of another size, renamed over it, as a process that can write
/// the BPF filesystem could) is not adopted: the next agent refuses to
/// start and names the map, and the pinned generation stays in force.
#[test]
fn a_planted_map_is_not_adopted() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let pins = PinDir::new();
    let pin_dir = pins.path().to_str().expect("a UTF-8 path").to_owned();
    let args = ["--pin-dir", pin_dir.as_str()];
    let first = Agent::start(&args).unwrap_or_else(|failure| panic!("{failure}"));
    let first = first.stop().expect("stopping the agent");
    let maps = maps_dir(pins.path());
    std::fs::rename(maps.join("REPORTED"), maps.join("COUNTERS")).expect("planting a map");
    let refused = match Agent::start(&args) {
        Ok(agent) => panic!("an agent adopted a planted map:\n{}", agent.log()),
        Err(failure) => failure,
    };
    assert!(
        refused.stderr.contains("refusing to adopt the pinned map")
            && refused.stderr.contains("COUNTERS"),
        "{refused}\n{}",
        first.stderr
    );
    // The generation pinned before still decides.
    let image = Image::busybox().expect("building the image");
    let run = container::run(&image, DROP_AND_RUN).expect("running the container");
    assert!(run.stdout.contains("image-ok") && !ran(&run), "{run:#?}");
}

/// The one `maps-*` directory under `pins`.
fn maps_dir(pins: &Path) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(pins)
        .expect("reading the pin directory")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("maps-"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// A cgroup v2 group of its own for one process, with the memory
/// controller; removed on drop. (cgroup v1 would not OOM-kill at a limit
/// of 0 but fail the charges; the host mounts v1's memory controller.)
struct MemoryLimit {
    path: std::path::PathBuf,
}

impl MemoryLimit {
    /// Moves `pid` into a new group; `None` without cgroup v2's memory
    /// controller.
    fn on(pid: u32) -> Option<Self> {
        let root = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|name| name == "memory") {
            return None;
        }
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        let limit = Self {
            path: root.join(format!("enforcer-test-oom-{}", std::process::id())),
        };
        std::fs::create_dir(&limit.path).ok()?;
        std::fs::write(limit.path.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(limit)
    }

    /// No memory at all: the next charge in the group OOM-kills.
    fn squeeze(&self) {
        let _ = std::fs::write(self.path.join("memory.swap.max"), "0");
        std::fs::write(self.path.join("memory.max"), "0").expect("setting memory.max");
    }

    fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.path.join("memory.events")).is_ok_and(|events| {
            events.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|count| count.trim().parse::<u64>().ok())
                    .is_some_and(|count| count > 0)
            })
        })
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}
