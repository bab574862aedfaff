//! rpm's `Packages` file in its Berkeley DB form (rpm before 4.16: `CentOS`
//! and RHEL 5 to 8, Amazon Linux 2): a Berkeley DB hash database whose keys
//! are package instance numbers and whose values are package headers.
//!
//! Read page by page, without the Berkeley DB library (rpm itself reads it
//! this way since 4.16, `bdb_ro`). The layout is Berkeley DB's `db_page.h`:
//! page 0 is the hash metadata page; hash pages hold an index of item
//! offsets, key and value alternating; a header is far larger than an item
//! kept on its hash page, so it lives on a chain of overflow pages that the
//! value item points at.

use std::{fs::File, os::unix::fs::FileExt as _};

/// `DB_HASHMAGIC`.
const HASH_MAGIC: u32 = 0x0006_1561;
/// `P_HASHMETA`, `P_HASH_UNSORTED` (before Berkeley DB 4.6), `P_HASH`,
/// `P_OVERFLOW`.
const PAGE_HASH_META: u8 = 8;
const PAGE_HASH_UNSORTED: u8 = 2;
const PAGE_HASH: u8 = 13;
const PAGE_OVERFLOW: u8 = 7;
/// Item types: `H_KEYDATA` (the bytes follow the type), `H_OFFPAGE` (a page
/// number and a length).
const ITEM_KEYDATA: u8 = 1;
const ITEM_OFFPAGE: u8 = 3;
/// `SIZEOF_PAGE`: the header of every page but the metadata page.
const PAGE_HEADER: usize = 26;
/// `DBMETA_CHKSUM`: pages carry a checksum, which moves their contents.
const META_CHECKSUM: u8 = 0x01;

/// One Berkeley DB hash file, read with `pread`.
struct Database<'a> {
    file: &'a File,
    page_size: usize,
    last_page: u32,
    big_endian: bool,
}

impl Database<'_> {
    fn u16(&self, bytes: &[u8], at: usize) -> Option<u16> {
        let raw: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        })
    }

    fn u32(&self, bytes: &[u8], at: usize) -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    }

    fn page(&self, number: u32) -> Result<Vec<u8>, String> {
        if number > self.last_page {
            return Err(format!(
                "page {number} is past the last page ({})",
                self.last_page
            ));
        }
        let mut page = vec![0; self.page_size];
        self.file
            .read_exact_at(&mut page, u64::from(number) * self.page_size as u64)
            .map_err(|error| format!("reading page {number}: {error}"))?;
        Ok(page)
    }

    /// The `entries` item offsets of a hash page.
    fn index(&self, page: &[u8]) -> Result<Vec<usize>, String> {
        let entries = self.u16(page, 20).ok_or("short page")?;
        (0..usize::from(entries))
            .map(|n| {
                self.u16(page, PAGE_HEADER + 2 * n)
                    .map(usize::from)
                    .filter(|offset| *offset >= PAGE_HEADER && *offset < page.len())
                    .ok_or_else(|| format!("item {n} of a hash page is outside the page"))
            })
            .collect()
    }

    /// The bytes of item `n` of a hash page, whose items are stored from the
    /// end of the page down: each ends where the one before it starts.
    fn item<'p>(page: &'p [u8], index: &[usize], n: usize) -> Option<&'p [u8]> {
        let start = *index.get(n)?;
        let end = if n == 0 {
            page.len()
        } else {
            *index.get(n - 1)?
        };
        page.get(start..end)
    }

    /// The value an item holds: inline, or on its overflow pages.
    fn value(&self, item: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match item.first() {
            Some(&ITEM_KEYDATA) => Ok(Some(item[1..].to_vec())),
            Some(&ITEM_OFFPAGE) => {
                let first = self.u32(item, 4).ok_or("short off-page item")?;
                let length = self.u32(item, 8).ok_or("short off-page item")? as usize;
                self.overflow(first, length).map(Some)
            }
            // Duplicates are not used for rpm's packages.
            _ => Ok(None),
        }
    }

    /// `length` bytes from the chain of overflow pages starting at `first`.
    fn overflow(&self, first: u32, length: usize) -> Result<Vec<u8>, String> {
        if length > super::HEADER_MAX {
            return Err(format!("a {length}-byte value is larger than any header"));
        }
        let mut value = Vec::with_capacity(length);
        let mut number = first;
        // Each page is visited once at most: a loop in the chain ends here.
        for _ in 0..=self.last_page {
            if number == 0 || value.len() >= length {
                break;
            }
            let page = self.page(number)?;
            if page[25] != PAGE_OVERFLOW {
                return Err(format!("page {number} is not an overflow page"));
            }
            // On an overflow page, the "free offset" is the bytes it holds.
            let used = usize::from(self.u16(&page, 22).ok_or("short page")?);
            let bytes = page
                .get(PAGE_HEADER..PAGE_HEADER + used)
                .ok_or_else(|| format!("overflow page {number} claims {used} bytes"))?;
            value.extend_from_slice(bytes);
            number = self.u32(&page, 16).ok_or("short page")?;
        }
        if value.len() != length {
            return Err(format!(
                "an overflow chain holds {} bytes, not {length}",
                value.len()
            ));
        }
        Ok(value)
    }
}

/// Whether `first_page` starts a Berkeley DB hash database.
pub(super) fn is_bdb(first_page: &[u8]) -> bool {
    first_page
        .get(12..16)
        .and_then(|magic| <[u8; 4]>::try_from(magic).ok())
        .is_some_and(|magic| {
            u32::from_le_bytes(magic) == HASH_MAGIC || u32::from_be_bytes(magic) == HASH_MAGIC
        })
}

/// Every value of the hash database `file` but the one under key 0, where
/// rpm keeps its next instance number: the package headers.
///
/// # Errors
/// The file is not a Berkeley DB hash database this reader understands
/// (encrypted, checksummed, an unusual page size) or a page is damaged.
pub(super) fn headers(file: &File) -> Result<Vec<Vec<u8>>, String> {
    let mut meta = [0_u8; 512];
    file.read_exact_at(&mut meta, 0)
        .map_err(|error| format!("reading the metadata page: {error}"))?;
    let big_endian = match meta.get(12..16).and_then(|m| <[u8; 4]>::try_from(m).ok()) {
        Some(magic) if u32::from_le_bytes(magic) == HASH_MAGIC => false,
        Some(magic) if u32::from_be_bytes(magic) == HASH_MAGIC => true,
        _ => return Err("not a Berkeley DB hash database".to_owned()),
    };
    let mut database = Database {
        file,
        page_size: 0,
        last_page: 0,
        big_endian,
    };
    let page_size = database.u32(&meta, 20).unwrap_or(0) as usize;
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("unexpected page size {page_size}"));
    }
    if meta[25] != PAGE_HASH_META {
        return Err(format!("page 0 has type {}, not hash metadata", meta[25]));
    }
    if meta[24] != 0 {
        return Err("the database is encrypted".to_owned());
    }
    if meta[26] & META_CHECKSUM != 0 {
        return Err("the database's pages are checksummed, which is not read".to_owned());
    }
    let last_page = database.u32(&meta, 32).unwrap_or(0);
    let size = file
        .metadata()
        .map_err(|error| format!("reading the file's size: {error}"))?
        .len();
    if (u64::from(last_page) + 1) * page_size as u64 > size {
        return Err(format!(
            "{} pages of {page_size} bytes do not fit in {size} bytes",
            u64::from(last_page) + 1
        ));
    }
    database.page_size = page_size;
    database.last_page = last_page;

    let mut headers = Vec::new();
    for number in 1..=last_page {
        let page = database.page(number)?;
        if page[25] != PAGE_HASH && page[25] != PAGE_HASH_UNSORTED {
            continue;
        }
        let index = database
            .index(&page)
            .map_err(|error| format!("page {number}: {error}"))?;
        for pair in (0..index.len()).step_by(2) {
            let (Some(key), Some(value)) = (
                Database::item(&page, &index, pair),
                Database::item(&page, &index, pair + 1),
            ) else {
                return Err(format!("page {number}: a key without a value"));
            };
            // rpm's keys are 4-byte instance numbers; 0 holds the next one.
            if key.first() == Some(&ITEM_KEYDATA) && key[1..].iter().all(|byte| *byte == 0) {
                continue;
            }
            if let Some(value) = database
                .value(value)
                .map_err(|error| format!("page {number}: {error}"))?
            {
                headers.push(value);
            }
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Berkeley DB's own output (see testdata/rpm/README.md).
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rpm/Packages");

    fn damaged(name: &str, change: impl FnOnce(&mut Vec<u8>)) -> (PathBuf, File) {
        let mut bytes = std::fs::read(FIXTURE).unwrap();
        change(&mut bytes);
        let path = std::env::temp_dir().join(format!("enforcer-bdb-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn reads_the_header_from_its_overflow_pages_and_skips_key_zero() {
        let file = File::open(FIXTURE).unwrap();
        let headers = headers(&file).unwrap();
        assert_eq!(headers.len(), 1);
        // Longer than a 512-byte page: it came from a chain of pages.
        assert!(headers[0].len() > 1024, "{}", headers[0].len());
        let package = super::super::parse_package(&headers[0]).unwrap();
        assert_eq!(package.name, "vulnpkg");
        assert_eq!(package.files, ["/usr/bin/vulnprog"]);
    }

    #[test]
    fn damaged_databases_are_errors_not_panics() {
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage); 5] = [
            // Cut inside the overflow chain.
            ("truncated", |bytes| bytes.truncate(1024 + 100)),
            ("not-bdb", |bytes| bytes[12] = 0),
            ("page-size", |bytes| {
                bytes[20..24].copy_from_slice(&100_u32.to_le_bytes());
            }),
            // Every overflow page points back at itself: the chain never ends.
            ("loop", |bytes| {
                for page in bytes.chunks_exact_mut(512).skip(1) {
                    if page[25] == PAGE_OVERFLOW {
                        let number = page[8..12].to_vec();
                        page[16..20].copy_from_slice(&number);
                    }
                }
            }),
            // Every item offset of the hash pages points past the page.
            ("index", |bytes| {
                for page in bytes.chunks_exact_mut(512).skip(1) {
                    if page[25] == PAGE_HASH {
                        let entries = usize::from(u16::from_le_bytes([page[20], page[21]]));
                        for n in 0..entries {
                            page[26 + 2 * n..28 + 2 * n].copy_from_slice(&600_u16.to_le_bytes());
                        }
                    }
                }
            }),
        ];
        for (name, change) in cases {
            let (path, file) = damaged(name, change);
            let result = headers(&file);
            let _ = std::fs::remove_file(path);
            assert!(result.is_err(), "{name}: {result:?}");
        }
    }
}
