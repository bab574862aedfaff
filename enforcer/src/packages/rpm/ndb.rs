//! rpm's own package database, "ndb" (`Packages.db`: SUSE Linux Enterprise
//! 15, openSUSE), as rpm's `lib/backend/ndb/rpmpkg.c` lays it out.
//!
//! The file starts with slot pages of 4096 bytes; the first 32 bytes are
//! the file header (magic `RpmP`, version 0, generation, number of slot
//! pages), the rest are 16-byte slots (magic `Slot`, package index, block
//! offset and block count, the block being 16 bytes). A used slot points at
//! a blob: a 16-byte blob header (magic `BlbS`, package index, checksum,
//! length) followed by the package header. All little-endian.

use std::{fs::File, os::unix::fs::FileExt as _};

const SLOT_PAGE: usize = 4096;
const SLOT_SIZE: usize = 16;
const BLOCK_SIZE: u64 = 16;
const FILE_MAGIC: &[u8; 4] = b"RpmP";
const SLOT_MAGIC: &[u8; 4] = b"Slot";
const BLOB_MAGIC: &[u8; 4] = b"BlbS";
/// rpm refuses more slot pages than this itself.
const SLOT_PAGES_MAX: u32 = 2048;

fn le32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|word| <[u8; 4]>::try_from(word).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Whether `first_bytes` start an ndb package database.
pub(super) fn is_ndb(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(FILE_MAGIC)
}

/// The package headers of the ndb database `file`, in slot order.
///
/// # Errors
/// The file is not an ndb database of version 0, or a slot or blob is
/// damaged.
pub(super) fn headers(file: &File) -> Result<Vec<Vec<u8>>, String> {
    let mut first = [0_u8; 32];
    file.read_exact_at(&mut first, 0)
        .map_err(|error| format!("reading the header: {error}"))?;
    if !is_ndb(&first) {
        return Err("not an rpm ndb database".to_owned());
    }
    let version = le32(&first, 4);
    if version != 0 {
        return Err(format!("ndb version {version} is not read (0 is)"));
    }
    let pages = le32(&first, 12);
    if pages == 0 || pages > SLOT_PAGES_MAX {
        return Err(format!("{pages} slot pages"));
    }
    let mut slots = vec![0_u8; pages as usize * SLOT_PAGE];
    file.read_exact_at(&mut slots, 0)
        .map_err(|error| format!("reading {pages} slot pages: {error}"))?;
    let mut headers = Vec::new();
    // The first two slots' room is the file header.
    for (number, slot) in slots.chunks_exact(SLOT_SIZE).enumerate().skip(2) {
        if !slot.starts_with(SLOT_MAGIC) {
            return Err(format!("slot {number} has no slot magic"));
        }
        let package = le32(slot, 4);
        if package == 0 {
            continue;
        }
        let offset = u64::from(le32(slot, 8)) * BLOCK_SIZE;
        let mut blob_header = [0_u8; 16];
        file.read_exact_at(&mut blob_header, offset)
            .map_err(|error| format!("reading package {package}'s blob: {error}"))?;
        if !blob_header.starts_with(BLOB_MAGIC) || le32(&blob_header, 4) != package {
            return Err(format!(
                "slot {number} points at no blob of package {package}"
            ));
        }
        let length = le32(&blob_header, 12) as usize;
        if length > super::HEADER_MAX {
            return Err(format!("package {package}'s blob claims {length} bytes"));
        }
        let mut blob = vec![0_u8; length];
        file.read_exact_at(&mut blob, offset + 16)
            .map_err(|error| format!("reading package {package}'s blob: {error}"))?;
        headers.push(blob);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ndb file as rpmpkg.c lays one out: one slot page, `blobs` stored
    /// one after another from the second page, each in its slot.
    fn database(blobs: &[&[u8]]) -> Vec<u8> {
        let mut file = vec![0_u8; SLOT_PAGE];
        file[..4].copy_from_slice(FILE_MAGIC);
        file[12..16].copy_from_slice(&1_u32.to_le_bytes());
        for slot in file[32..].chunks_exact_mut(SLOT_SIZE) {
            slot[..4].copy_from_slice(SLOT_MAGIC);
        }
        for (index, blob) in blobs.iter().enumerate() {
            let package = u32::try_from(index).unwrap() + 1;
            let block = u32::try_from(file.len() as u64 / BLOCK_SIZE).unwrap();
            let slot = 32 + index * SLOT_SIZE;
            file[slot + 4..slot + 8].copy_from_slice(&package.to_le_bytes());
            file[slot + 8..slot + 12].copy_from_slice(&block.to_le_bytes());
            file.extend(BLOB_MAGIC);
            file.extend(package.to_le_bytes());
            file.extend(0_u32.to_le_bytes());
            file.extend(u32::try_from(blob.len()).unwrap().to_le_bytes());
            file.extend(*blob);
            // The blob's tail, then padding to a whole block.
            file.extend([0_u8; 16]);
            file.resize(file.len().next_multiple_of(BLOCK_SIZE as usize), 0);
        }
        file
    }

    fn read(name: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let path = std::env::temp_dir().join(format!("enforcer-ndb-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let result = headers(&File::open(&path).unwrap());
        let _ = std::fs::remove_file(path);
        result
    }

    #[test]
    fn reads_the_blob_of_every_used_slot() {
        let bytes = database(&[b"first header", b"second"]);
        assert!(is_ndb(&bytes));
        assert_eq!(
            read("two", &bytes).unwrap(),
            [b"first header".to_vec(), b"second".to_vec()]
        );
    }

    #[test]
    fn damaged_databases_are_errors_not_panics() {
        let good = database(&[b"header"]);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bytes = good.clone();
        bytes[4] = 1;
        cases.push(("version", bytes));
        let mut bytes = good.clone();
        bytes[12..16].copy_from_slice(&5000_u32.to_le_bytes());
        cases.push(("pages", bytes));
        let mut bytes = good.clone();
        bytes[48] = b'X';
        cases.push(("slot-magic", bytes));
        let mut bytes = good.clone();
        bytes[SLOT_PAGE + 4] = 9;
        cases.push(("blob-package", bytes));
        let mut bytes = good.clone();
        bytes[SLOT_PAGE + 12..SLOT_PAGE + 16].copy_from_slice(&4000_u32.to_le_bytes());
        cases.push(("blob-length", bytes));
        cases.push(("truncated", good[..SLOT_PAGE + 8].to_vec()));
        for (name, bytes) in cases {
            assert!(read(name, &bytes).is_err(), "{name}");
        }
    }
}
