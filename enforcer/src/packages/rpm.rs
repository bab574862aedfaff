//! rpm's package database in its `SQLite` form (`rpmdb.sqlite`, rpm 4.16 and
//! later: Fedora 33+, RHEL, Rocky and Alma 9, Amazon Linux 2023). Its
//! `Packages` table holds each installed package's header, in rpm's header
//! format: a count of index entries and the size of the data, the entries
//! (tag, type, offset, count; big-endian), then the data. The file list is
//! three tags: base names, directory names, and each file's directory.
//!
//! Older images keep the same headers in a Berkeley DB hash file
//! ([`bdb`]) or in rpm's own ndb format ([`ndb`]).

mod bdb;
mod ndb;

use std::{
    collections::BTreeMap,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
};

use rusqlite::{Connection, OpenFlags};

const TAG_NAME: u32 = 1000;
const TAG_FILEMODES: u32 = 1030;
const TAG_FILEFLAGS: u32 = 1037;
const TAG_DIRINDEXES: u32 = 1116;
const TAG_BASENAMES: u32 = 1117;
const TAG_DIRNAMES: u32 = 1118;

const TYPE_INT16: u32 = 3;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;

/// `%doc`, `%license` and `%ghost` files (documentation, or not installed).
const NOT_CODE_FLAGS: u32 = (1 << 1) | (1 << 7) | (1 << 6);
const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;

/// A header larger than this is refused (rpm's own limit is 256 MiB of
/// data; real headers are kilobytes to a few megabytes).
const HEADER_MAX: usize = 64 << 20;

/// One package as its header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// The regular files it installed, documentation left out.
    pub files: Vec<String>,
}

struct Entry {
    kind: u32,
    offset: usize,
    count: usize,
}

struct Header<'a> {
    entries: BTreeMap<u32, Entry>,
    data: &'a [u8],
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

impl<'a> Header<'a> {
    fn parse(blob: &'a [u8]) -> Result<Self, String> {
        let count = be32(blob, 0).ok_or("header shorter than its preamble")? as usize;
        let size = be32(blob, 4).ok_or("header shorter than its preamble")? as usize;
        let index_end = count
            .checked_mul(16)
            .and_then(|bytes| bytes.checked_add(8))
            .filter(|end| *end <= blob.len())
            .ok_or_else(|| format!("{count} index entries do not fit in the header"))?;
        if size > HEADER_MAX || index_end + size > blob.len() {
            return Err(format!("{size} bytes of header data do not fit"));
        }
        let data = &blob[index_end..index_end + size];
        let mut entries = BTreeMap::new();
        for index in 0..count {
            let at = 8 + index * 16;
            let field = |n: usize| be32(blob, at + n * 4).unwrap_or(0);
            entries.insert(
                field(0),
                Entry {
                    kind: field(1),
                    offset: field(2) as usize,
                    count: field(3) as usize,
                },
            );
        }
        Ok(Self { entries, data })
    }

    fn entry(&self, tag: u32, kind: u32) -> Option<&Entry> {
        self.entries.get(&tag).filter(|entry| entry.kind == kind)
    }

    /// `count` NUL-terminated strings from the entry's offset.
    fn strings(&self, tag: u32) -> Option<Vec<String>> {
        let (kind, count) = match self.entries.get(&tag)?.kind {
            TYPE_STRING => (TYPE_STRING, 1),
            TYPE_STRING_ARRAY => (TYPE_STRING_ARRAY, self.entry(tag, TYPE_STRING_ARRAY)?.count),
            _ => return None,
        };
        let mut rest = self.data.get(self.entry(tag, kind)?.offset..)?;
        let mut out = Vec::with_capacity(count.min(rest.len()));
        for _ in 0..count {
            let end = rest.iter().position(|byte| *byte == 0)?;
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            rest = &rest[end + 1..];
        }
        Some(out)
    }

    fn integers(&self, tag: u32, kind: u32) -> Option<Vec<u32>> {
        let entry = self.entry(tag, kind)?;
        let width = if kind == TYPE_INT16 { 2 } else { 4 };
        let bytes = self
            .data
            .get(entry.offset..entry.offset.checked_add(entry.count.checked_mul(width)?)?)?;
        Some(
            bytes
                .chunks_exact(width)
                .map(|chunk| {
                    chunk
                        .iter()
                        .fold(0_u32, |value, byte| (value << 8) | u32::from(*byte))
                })
                .collect(),
        )
    }
}

/// The package a header blob describes. Pure.
///
/// # Errors
/// The blob is not an rpm header, or its file tags disagree.
pub fn parse_package(blob: &[u8]) -> Result<Package, String> {
    let header = Header::parse(blob)?;
    let name = header
        .strings(TAG_NAME)
        .and_then(|names| names.into_iter().next())
        .ok_or("no package name")?;
    let Some(basenames) = header.strings(TAG_BASENAMES) else {
        // A package without files (a meta-package).
        return Ok(Package {
            name,
            files: Vec::new(),
        });
    };
    let problem = |what: &str| format!("package {name}: {what}");
    let dirnames = header
        .strings(TAG_DIRNAMES)
        .ok_or_else(|| problem("file names without directories"))?;
    let dirindexes = header
        .integers(TAG_DIRINDEXES, TYPE_INT32)
        .filter(|indexes| indexes.len() == basenames.len())
        .ok_or_else(|| problem("file directories do not match the file names"))?;
    let modes = header.integers(TAG_FILEMODES, TYPE_INT16);
    let flags = header.integers(TAG_FILEFLAGS, TYPE_INT32);
    let mut files = Vec::with_capacity(basenames.len());
    for (index, base) in basenames.iter().enumerate() {
        let dir = dirnames
            .get(dirindexes[index] as usize)
            .ok_or_else(|| problem("a file's directory index is out of range"))?;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "INT16 values were read from two bytes"
        )]
        let mode = modes
            .as_ref()
            .and_then(|modes| modes.get(index))
            .map(|mode| *mode as u16);
        let flag = flags.as_ref().and_then(|flags| flags.get(index)).copied();
        let regular = mode.is_none_or(|mode| mode & S_IFMT == S_IFREG);
        if regular && flag.is_none_or(|flag| flag & NOT_CODE_FLAGS == 0) {
            files.push(format!("{dir}{base}"));
        }
    }
    Ok(Package { name, files })
}

/// Every package of the `SQLite` database open as `file`: name -> files.
///
/// # Errors
/// The file is not an rpm `SQLite` database, or a header is not readable.
pub fn read_sqlite(file: &File) -> Result<BTreeMap<String, Vec<String>>, String> {
    // Opened through the descriptor (resolved inside the image root) and
    // immutable: nothing is written beside an image's database, and its
    // -wal/-shm files, if any, are not looked for (rpm checkpoints when it
    // closes the database).
    let uri = format!("file:/proc/self/fd/{}?immutable=1", file.as_raw_fd());
    let connection = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| error.to_string())?;
    let mut statement = connection
        .prepare("SELECT blob FROM Packages")
        .map_err(|error| error.to_string())?;
    let blobs = statement
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .map_err(|error| error.to_string())?;
    let blobs = blobs
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    collect(&blobs)
}

/// Every package of the Berkeley DB (`Packages`) or ndb (`Packages.db`)
/// database open as `file`, told apart by their first bytes: name -> files.
///
/// # Errors
/// The file is neither, or a page, slot or header is not readable.
pub fn read_legacy(file: &File) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut first = [0_u8; 16];
    file.read_exact_at(&mut first, 0)
        .map_err(|error| format!("reading the first bytes: {error}"))?;
    let blobs = if bdb::is_bdb(&first) {
        bdb::headers(file).map_err(|error| format!("Berkeley DB: {error}"))?
    } else if ndb::is_ndb(&first) {
        ndb::headers(file).map_err(|error| format!("ndb: {error}"))?
    } else {
        return Err("neither a Berkeley DB hash database nor an rpm ndb database".to_owned());
    };
    collect(&blobs)
}

/// The packages of header blobs: name -> files.
fn collect(blobs: &[Vec<u8>]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for blob in blobs {
        let package = parse_package(blob)?;
        // Multilib installs one name twice (x86_64 and i686): both count.
        packages
            .entry(package.name)
            .or_default()
            .extend(package.files);
    }
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as rpm lays one out, built by hand for the test.
    fn header(entries: &[(u32, u32, Vec<u8>, u32)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, bytes, count) in entries {
            // INT32 data is 4-byte aligned, as rpm aligns it.
            while *kind == TYPE_INT32 && data.len() % 4 != 0 {
                data.push(0);
            }
            for word in [*tag, *kind, data.len() as u32, *count] {
                index.extend(word.to_be_bytes());
            }
            data.extend(bytes);
        }
        let mut blob = Vec::new();
        blob.extend((entries.len() as u32).to_be_bytes());
        blob.extend((data.len() as u32).to_be_bytes());
        blob.extend(index);
        blob.extend(data);
        blob
    }

    fn strings(values: &[&str]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.bytes().chain([0]))
            .collect()
    }

    #[test]
    fn a_header_lists_its_regular_files_without_documentation() {
        let modes: Vec<u8> = [0o100_755_u16, 0o120_777, 0o100_644, 0o040_755]
            .iter()
            .flat_map(|mode| mode.to_be_bytes())
            .collect();
        let blob = header(&[
            (TAG_NAME, TYPE_STRING, strings(&["openssl-libs"]), 1),
            (TAG_FILEMODES, TYPE_INT16, modes, 4),
            (
                TAG_FILEFLAGS,
                TYPE_INT32,
                [0_u32, 0, 1 << 1, 0]
                    .iter()
                    .flat_map(|flag| flag.to_be_bytes())
                    .collect(),
                4,
            ),
            (
                TAG_DIRINDEXES,
                TYPE_INT32,
                [0_u32, 0, 1, 2]
                    .iter()
                    .flat_map(|index| index.to_be_bytes())
                    .collect(),
                4,
            ),
            (
                TAG_BASENAMES,
                TYPE_STRING_ARRAY,
                strings(&["libssl.so.3.0.7", "libssl.so.3", "README", "engines-3"]),
                4,
            ),
            (
                TAG_DIRNAMES,
                TYPE_STRING_ARRAY,
                strings(&["/usr/lib64/", "/usr/share/doc/openssl-libs/", "/usr/lib64/"]),
                3,
            ),
        ]);
        let package = parse_package(&blob).unwrap();
        assert_eq!(package.name, "openssl-libs");
        // The symlink, the %doc file and the directory are left out.
        assert_eq!(package.files, ["/usr/lib64/libssl.so.3.0.7"]);
    }

    #[test]
    fn broken_headers_are_errors_not_panics() {
        assert!(parse_package(&[]).is_err());
        assert!(parse_package(&[0, 0, 0, 9, 0, 0, 0, 0]).is_err());
        assert!(parse_package(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
        let no_name = header(&[(TAG_DIRNAMES, TYPE_STRING_ARRAY, strings(&["/"]), 1)]);
        assert!(parse_package(&no_name).is_err());
        let bad_index = header(&[
            (TAG_NAME, TYPE_STRING, strings(&["p"]), 1),
            (TAG_BASENAMES, TYPE_STRING_ARRAY, strings(&["f"]), 1),
            (TAG_DIRNAMES, TYPE_STRING_ARRAY, strings(&["/"]), 1),
            (TAG_DIRINDEXES, TYPE_INT32, 7_u32.to_be_bytes().to_vec(), 1),
        ]);
        assert!(parse_package(&bad_index).is_err());
        // A string array that runs past the data.
        let short = header(&[(TAG_NAME, TYPE_STRING_ARRAY, strings(&["p"]), 5)]);
        assert!(parse_package(&short).is_err());
    }
}
