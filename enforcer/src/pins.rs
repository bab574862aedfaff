//! Enforcement that outlives the agent: its kernel objects pinned in a BPF
//! filesystem.
//!
//! Under the pin directory ([`DEFAULT_DIR`] by default):
//! - `maps-abi<ABI>-<layout>/<MAP>`: the maps, made by the first agent with
//!   this ABI and these map definitions and reused by every later one: the
//!   policy, the containers the kernel recorded, written files, rate limits,
//!   counters and the ring buffer, where records made while no agent runs
//!   wait for the next one.
//! - `links/<generation>-abi<ABI>/<program>`: the attached programs of one
//!   agent generation. A pinned link keeps its program attached when the
//!   agent's descriptors close, and the program keeps its maps.
//!
//! A starting agent attaches its programs holding them by its descriptors
//! only, so that if it dies half-way they go with it and the generation
//! before stays in force. Once its policy is in force it pins them
//! ([`Links::commit`]), and only then unpins the generations before it.
//! Both generations decide in between: every LSM program must allow, and
//! either signal program may kill, so the overlap can only be stricter,
//! never a gap.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use aya::programs::links::{FdLink, PinnedLink};
use enforcer_common::ABI_VERSION;

/// Where the agent pins its objects unless told otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/enforcer";
/// `statfs(2)`'s `f_type` of a BPF filesystem.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// The usual mount point of the BPF filesystem, mounted when missing.
const BPF_FS_ROOT: &str = "/sys/fs/bpf";
const LINKS: &str = "links";
const MAPS_PREFIX: &str = "maps-";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not on a BPF filesystem: mount one there (mount -t bpf bpf DIR) or choose a \
         --pin-dir under {BPF_FS_ROOT}",
        path.display()
    )]
    NotBpfFs { path: PathBuf },
    #[error("mounting a BPF filesystem on {BPF_FS_ROOT}: {0}")]
    Mount(#[source] io::Error),
    #[error("the kernel object's maps: {0}")]
    Object(String),
    #[error("refusing to adopt the pinned map {}: {what}", path.display())]
    Adopt { path: PathBuf, what: String },
    #[error("pinning program {program} at {}: {source}", path.display())]
    Pin {
        program: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The maps of a kernel object: which to pin, and the name of the
/// directory that holds maps of exactly these definitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLayout {
    maps: Vec<MapDefinition>,
    dir: String,
}

/// What the kernel says of a map, and the object defines.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MapDefinition {
    name: String,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for MapDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}:{}",
            self.name, self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

impl MapLayout {
    /// The maps `object` defines (its globals are not pinned: every load
    /// has its own). Two objects share pinned maps only when the ABI and
    /// every map's type, key and value size, capacity and flags are equal.
    pub fn of(object: &[u8]) -> Result<Self, PinError> {
        use aya_obj::EbpfSectionKind;
        let parsed =
            aya_obj::Object::parse(object).map_err(|error| PinError::Object(error.to_string()))?;
        let mut maps: Vec<MapDefinition> = parsed
            .maps
            .iter()
            .filter(|(_, map)| {
                matches!(
                    map.section_kind(),
                    EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
                )
            })
            .map(|(name, map)| MapDefinition {
                name: name.clone(),
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            })
            .collect();
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        let definitions: Vec<String> = maps.iter().map(ToString::to_string).collect();
        let digest = fnv1a(format!("abi{ABI_VERSION};{}", definitions.join(";")).as_bytes());
        Ok(Self {
            maps,
            dir: format!("{MAPS_PREFIX}abi{ABI_VERSION}-{digest:016x}"),
        })
    }

    /// The maps to pin, by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.maps.iter().map(|map| map.name.as_str())
    }

    /// Checks what is pinned in `dir` against the definitions before it is
    /// adopted: a directory's name says what an agent meant to pin there,
    /// not what a process that can write the BPF filesystem put there.
    pub fn check_pinned(&self, dir: &Path) -> Result<(), PinError> {
        for map in &self.maps {
            let path = dir.join(&map.name);
            if !path.exists() {
                continue;
            }
            let info = aya::maps::MapInfo::from_pin(&path).map_err(|error| PinError::Adopt {
                path: path.clone(),
                what: error.to_string(),
            })?;
            let found = (
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                info.map_flags(),
            );
            let expected = (map.key_size, map.value_size, map.max_entries, map.flags);
            if found != expected {
                return Err(PinError::Adopt {
                    path,
                    what: format!(
                        "key, value, entries and flags are {found:?}, not {expected:?} as this agent's {} \
                         (remove the pins with `enforcer unload`)",
                        map.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// The directory name of maps of this layout.
    pub fn dir(&self) -> &str {
        &self.dir
    }
}

/// A stable digest (the standard library's hasher may change between Rust
/// releases, and the name must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A generation of pinned links found in the pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub number: u64,
    pub abi: Option<u32>,
    /// The directory's name under `links/`.
    pub name: String,
    /// When it was pinned (the directory's modification time).
    pub pinned_at: Option<SystemTime>,
    /// The programs pinned in it.
    pub programs: usize,
}

impl Generation {
    fn parse(name: &str) -> Option<(u64, Option<u32>)> {
        let (number, abi) = match name.split_once("-abi") {
            Some((number, abi)) => (number, abi.parse().ok()),
            None => (name, None),
        };
        Some((number.parse().ok()?, abi))
    }
}

/// The pin directory, locked by this process for as long as it lives:
/// two agents must not retire each other's generations.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Holds the `flock(2)` on the directory.
    _lock: File,
}

impl Store {
    /// Opens (and makes) the pin directory `root`, mounting the BPF
    /// filesystem on `/sys/fs/bpf` when it is missing there. Waits, saying
    /// so, while another agent holds the directory.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        ensure_bpf_fs(root)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join(LINKS))
            .map_err(io_error(root))?;
        let lock = File::open(root).map_err(io_error(root))?;
        if !try_lock(&lock, false).map_err(io_error(root))? {
            tracing::warn!(
                dir = %root.display(),
                "another agent holds the pin directory: waiting for it to stop"
            );
            try_lock(&lock, true).map_err(io_error(root))?;
        }
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where maps of `layout` are pinned, and whether they were already
    /// (left by an agent before this one, whose state is adopted).
    pub fn maps(&self, layout: &MapLayout) -> (PathBuf, bool) {
        let dir = self.root.join(layout.dir());
        let adopted = dir.is_dir();
        (dir, adopted)
    }

    /// The generations pinned now, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, PinError> {
        generations(&self.root)
    }

    /// This agent's generation: one more than any pinned, its links held
    /// until [`Links::commit`].
    pub fn begin(&self) -> Result<Links, PinError> {
        let number = self
            .generations()?
            .last()
            .map_or(1, |generation| generation.number + 1);
        let name = format!("{number:06}-abi{ABI_VERSION}");
        Ok(Links(Arc::new(Mutex::new(LinkState {
            dir: self.root.join(LINKS).join(&name),
            root: self.root.clone(),
            number,
            held: Vec::new(),
            pinned: Vec::new(),
            committed: false,
        }))))
    }
}

fn generations(root: &Path) -> Result<Vec<Generation>, PinError> {
    let links = root.join(LINKS);
    let entries = match std::fs::read_dir(&links) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(&links)(error)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&links))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((number, abi)) = Generation::parse(&name) else {
            continue;
        };
        let programs = std::fs::read_dir(entry.path()).map_or(0, Iterator::count);
        found.push(Generation {
            number,
            abi,
            pinned_at: entry.metadata().and_then(|meta| meta.modified()).ok(),
            name,
            programs,
        });
    }
    found.sort_by_key(|generation| generation.number);
    Ok(found)
}

/// `flock(2)`, exclusive; `false` when another holds it and `wait` is not
/// set.
fn try_lock(file: &File, wait: bool) -> io::Result<bool> {
    let operation = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor this function borrows.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Makes sure `root` is (to be) on a BPF filesystem: one is mounted on
/// `/sys/fs/bpf` when that is where `root` goes and nothing is mounted
/// there. A directory elsewhere must already be on one.
fn ensure_bpf_fs(root: &Path) -> Result<(), PinError> {
    let existing = root
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    if is_bpf_fs(existing).map_err(io_error(existing))? {
        return Ok(());
    }
    if !root.starts_with(BPF_FS_ROOT) || existing != Path::new(BPF_FS_ROOT) {
        return Err(PinError::NotBpfFs {
            path: root.to_owned(),
        });
    }
    let (source, target, kind, data) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    tracing::info!("mounted a BPF filesystem on {BPF_FS_ROOT}");
    Ok(())
}

fn is_bpf_fs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: statfs(2) into a zeroed struct this function owns.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `path` is NUL-terminated.
    if unsafe { libc::statfs(path.as_ptr(), &raw mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(
        clippy::cast_sign_loss,
        reason = "f_type is a magic number; the kernel's s_magic is unsigned"
    )]
    Ok(stats.f_type as u64 == BPF_FS_MAGIC)
}

/// This agent generation's links: held by its descriptors until
/// [`Links::commit`], pinned from then on. Cloned handles share them.
#[derive(Clone, Debug)]
pub struct Links(Arc<Mutex<LinkState>>);

#[derive(Debug)]
struct LinkState {
    root: PathBuf,
    dir: PathBuf,
    number: u64,
    held: Vec<(String, FdLink)>,
    pinned: Vec<PinnedLink>,
    committed: bool,
}

/// What [`Links::commit`] did.
#[derive(Debug, Default)]
pub struct Committed {
    pub programs: usize,
    /// The generations and map directories it unpinned.
    pub retired: Vec<String>,
}

impl Links {
    /// Keeps `link`, attached for `program`: held until the generation
    /// commits, pinned at once after. A pin that fails detaches the link
    /// (the kernel object goes with its last descriptor); the error says
    /// so.
    pub fn keep(&self, program: &str, link: FdLink) -> Result<(), PinError> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.committed {
            let pinned = pin(&state.dir, program, link)?;
            state.pinned.push(pinned);
        } else {
            state.held.push((program.to_owned(), link));
        }
        Ok(())
    }

    /// The generation's number.
    pub fn number(&self) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).number
    }

    /// Pins every link held, then unpins every other generation and every
    /// map directory but `maps_dir`. Fails before unpinning anything when a
    /// pin fails, leaving the generation before in force.
    pub fn commit(&self, maps_dir: &Path) -> Result<Committed, PinError> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state.dir)
            .map_err(io_error(&state.dir))?;
        let held = std::mem::take(&mut state.held);
        let programs = held.len();
        for (program, link) in held {
            let pinned = pin(&state.dir, &program, link)?;
            state.pinned.push(pinned);
        }
        state.committed = true;
        let mut retired = Vec::new();
        let own = state.dir.file_name().map(ToOwned::to_owned);
        for generation in generations(&state.root)? {
            if Some(generation.name.as_ref()) != own.as_deref() {
                let path = state.root.join(LINKS).join(&generation.name);
                remove_tree(&path)?;
                retired.push(format!("{LINKS}/{}", generation.name));
            }
        }
        let entries = std::fs::read_dir(&state.root).map_err(io_error(&state.root))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&state.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(MAPS_PREFIX) && entry.path() != maps_dir {
                remove_tree(&entry.path())?;
                retired.push(name);
            }
        }
        Ok(Committed { programs, retired })
    }
}

fn pin(dir: &Path, program: &str, link: FdLink) -> Result<PinnedLink, PinError> {
    let path = dir.join(program);
    link.pin(&path).map_err(|source| PinError::Pin {
        program: program.to_owned(),
        path,
        source,
    })
}

/// Unpins everything under `path`: removing a pin drops the kernel's
/// reference; the object goes with its last one.
fn remove_tree(path: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err(io_error(path)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(path))?;
        let file_type = entry.file_type().map_err(io_error(&entry.path()))?;
        if file_type.is_dir() {
            removed.extend(remove_tree(&entry.path())?);
        } else {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            removed.push(entry.path());
        }
    }
    std::fs::remove_dir(path).map_err(io_error(path))?;
    Ok(removed)
}

/// What `enforcer unload` removed.
#[derive(Debug, Default)]
pub struct Unloaded {
    /// The pins removed, each a program's link or a map.
    pub removed: Vec<PathBuf>,
    /// Links that were pinned and that the kernel no longer has: programs
    /// detached.
    pub detached: usize,
    /// Links that were pinned and that the kernel still has after the
    /// wait: a running agent's descriptors hold them until it exits.
    pub still_attached: usize,
    /// Whether an agent still held the directory.
    pub agent_running: bool,
}

/// How long `unload` waits for the kernel to release what it unpinned.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes everything pinned under `root` (nothing pinned is not an
/// error), then waits until the kernel has let go of the links: it drops
/// an unpinned object after an RCU grace period and a work item, so an
/// exec right after the unlink may still be decided. The maps go once no
/// program or agent holds them.
pub fn unload(root: &Path) -> Result<Unloaded, PinError> {
    if !root.exists() {
        return Ok(Unloaded::default());
    }
    let lock = File::open(root).map_err(io_error(root))?;
    let agent_running = !try_lock(&lock, false).map_err(io_error(root))?;
    let links = pinned_links(&root.join(LINKS))?;
    let removed = remove_tree(root)?;
    // A running agent's descriptors keep its links: nothing to wait for.
    let timeout = if agent_running {
        Duration::ZERO
    } else {
        RELEASE_TIMEOUT
    };
    let still_attached = wait_released(&links, timeout);
    Ok(Unloaded {
        removed,
        detached: links.len() - still_attached,
        still_attached,
        agent_running,
    })
}

/// A pinned link, by the kernel's ids.
#[derive(Clone, Copy, Debug)]
struct LinkIds {
    link: u32,
    program: u32,
}

/// The links pinned under `dir`, at any depth. The descriptors opened to
/// ask are closed before this returns.
fn pinned_links(dir: &Path) -> Result<Vec<LinkIds>, PinError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut links = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            links.extend(pinned_links(&path)?);
            continue;
        }
        let info = PinnedLink::from_pin(&path)
            .map(FdLink::from)
            .and_then(|link| link.info())
            .map_err(|error| PinError::Io {
                path: path.clone(),
                source: io::Error::other(error),
            })?;
        links.push(LinkIds {
            link: info.id(),
            program: info.program_id(),
        });
    }
    Ok(links)
}

/// Waits until the kernel has none of `links`, nor their programs: an
/// unpinned link is put after an RCU grace period and a work item, and its
/// program after another grace period; a program the kernel no longer has
/// runs nowhere. How many it still has after `timeout`.
fn wait_released(links: &[LinkIds], timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        let live_links: BTreeSet<u32> = aya::programs::loaded_links()
            .flatten()
            .map(|link| link.id())
            .collect();
        let live_programs: BTreeSet<u32> = aya::programs::loaded_programs()
            .flatten()
            .map(|program| program.id())
            .collect();
        let left = links
            .iter()
            .filter(|ids| live_links.contains(&ids.link) || live_programs.contains(&ids.program))
            .count();
        if left == 0 || started.elapsed() >= timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_carry_number_and_abi() {
        assert_eq!(Generation::parse("000042-abi19"), Some((42, Some(19))));
        assert_eq!(Generation::parse("7"), Some((7, None)));
        assert_eq!(Generation::parse("x-abi19"), None);
    }

    #[test]
    fn the_digest_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_directory_off_bpffs_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("pins-test-{}", std::process::id()));
        let error = Store::open(&dir.join("enforcer")).expect_err("/tmp is not bpffs");
        assert!(
            error.to_string().contains("not on a BPF filesystem"),
            "{error}"
        );
    }

    #[test]
    fn unloading_nothing_is_not_an_error() {
        let unloaded = unload(Path::new("/nonexistent/enforcer")).expect("nothing to unload");
        assert!(unloaded.removed.is_empty());
    }
}
