//! The files of installed packages, read from the package database inside
//! an image's root directory: dpkg (`/var/lib/dpkg/info/PKG.list`), apk
//! (`/lib/apk/db/installed`) and rpm's databases ([`rpm`]: `SQLite`, and
//! the older Berkeley DB and ndb).

pub mod rpm;

use std::collections::BTreeMap;

use crate::resolve::Root;

/// The largest package database file read.
const DATABASE_MAX: u64 = 64 << 20;

/// Documentation is not what a vulnerability is exploited through, and
/// shielding it would only add entries.
const NOT_CODE: &[&str] = &[
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/lintian/",
    "/usr/share/locale/",
    "/usr/share/bug/",
];

/// Reads an rpm database file: package name -> files.
type RpmReader = fn(&std::fs::File) -> Result<BTreeMap<String, Vec<String>>, String>;

/// Where rpm keeps its database, newest form first: `SQLite` (rpm 4.16+),
/// Berkeley DB (`Packages`) and ndb (`Packages.db`).
const RPM_DATABASES: &[(&str, RpmReader)] = &[
    ("/usr/lib/sysimage/rpm/rpmdb.sqlite", rpm::read_sqlite),
    ("/var/lib/rpm/rpmdb.sqlite", rpm::read_sqlite),
    ("/var/lib/rpm/Packages", rpm::read_legacy),
    ("/usr/lib/sysimage/rpm/Packages.db", rpm::read_legacy),
    ("/var/lib/rpm/Packages.db", rpm::read_legacy),
];

/// Which package database the root has.
#[derive(Debug)]
pub enum Database {
    Dpkg,
    /// Package name -> the files it installed.
    Apk(BTreeMap<String, Vec<String>>),
    /// Package name -> its regular files, documentation left out.
    Rpm(BTreeMap<String, Vec<String>>),
    /// Distroless images keep dpkg's status without file lists.
    DpkgWithoutFileLists,
    None,
}

impl Database {
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Dpkg | Self::DpkgWithoutFileLists => "dpkg",
            Self::Apk(_) => "apk",
            Self::Rpm(_) => "rpm",
            Self::None => "none",
        }
    }
}

/// The installed packages of one root.
#[derive(Debug)]
pub struct Packages<'a> {
    root: &'a Root,
    pub database: Database,
}

impl<'a> Packages<'a> {
    /// Finds the root's package database (and reads apk's, which is one
    /// file).
    pub fn open(root: &'a Root) -> Result<Self, String> {
        let database = if root.exists("/var/lib/dpkg/info") {
            Database::Dpkg
        } else if root.exists("/lib/apk/db/installed") {
            let text = root
                .read("/lib/apk/db/installed", DATABASE_MAX)
                .map_err(|error| format!("reading /lib/apk/db/installed: {error}"))?;
            Database::Apk(parse_apk(&String::from_utf8_lossy(&text)))
        } else if let Some((path, read)) = RPM_DATABASES.iter().find(|(path, _)| root.exists(path))
        {
            let file = root
                .open_file(path)
                .map_err(|error| format!("opening {path}: {error}"))?;
            Database::Rpm(read(&file).map_err(|error| format!("reading {path}: {error}"))?)
        } else if root.exists("/var/lib/dpkg/status.d") {
            Database::DpkgWithoutFileLists
        } else {
            Database::None
        };
        Ok(Self { root, database })
    }

    /// The regular files `package` installed (documentation left out), as
    /// absolute paths in the root; or why they are not known.
    pub fn files(&self, package: &str) -> Result<Vec<String>, String> {
        let listed = match &self.database {
            Database::Dpkg => self.dpkg_list(package)?,
            Database::Apk(packages) | Database::Rpm(packages) => {
                packages.get(package).cloned().ok_or_else(|| {
                    format!("{package} is not in the {} database", self.database.name())
                })?
            }
            Database::DpkgWithoutFileLists => {
                return Err(
                    "the image's dpkg database has no file lists (a distroless image)".to_owned(),
                );
            }
            Database::None => {
                return Err("the image has no dpkg, apk or rpm database".to_owned());
            }
        };
        let mut files: Vec<String> = listed
            .into_iter()
            .filter(|path| !NOT_CODE.iter().any(|prefix| path.starts_with(prefix)))
            .filter(|path| self.root.is_regular_file(path))
            .collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(format!(
                "{package} installed no file that exists in the image"
            ));
        }
        Ok(files)
    }

    /// `PKG.list`, or `PKG:ARCH.list` for multi-arch packages.
    fn dpkg_list(&self, package: &str) -> Result<Vec<String>, String> {
        let info = "/var/lib/dpkg/info";
        let mut names = vec![format!("{package}.list")];
        let prefix = format!("{package}:");
        names.extend(
            self.root
                .list(std::path::Path::new(info.trim_start_matches('/')))
                .into_iter()
                .filter_map(|(name, _)| name.into_string().ok())
                .filter(|name| {
                    name.starts_with(&prefix)
                        && std::path::Path::new(name)
                            .extension()
                            .is_some_and(|extension| extension == "list")
                }),
        );
        for name in names {
            if let Ok(text) = self.root.read(&format!("{info}/{name}"), DATABASE_MAX) {
                return Ok(String::from_utf8_lossy(&text)
                    .lines()
                    .filter(|line| line.starts_with('/'))
                    .map(str::to_owned)
                    .collect());
            }
        }
        Err(format!("{package} has no file list in {info}"))
    }
}

/// apk's installed database: `P:` starts a package, `F:` names a directory
/// (relative to /), `R:` a file in the last directory. Pure.
pub fn parse_apk(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut package: Option<String> = None;
    let mut directory = String::new();
    for line in text.lines() {
        if line.is_empty() {
            package = None;
            directory.clear();
        } else if let Some(name) = line.strip_prefix("P:") {
            package = Some(name.to_owned());
            packages.entry(name.to_owned()).or_default();
        } else if let Some(dir) = line.strip_prefix("F:") {
            dir.clone_into(&mut directory);
        } else if let (Some(file), Some(name)) = (line.strip_prefix("R:"), &package) {
            let path = if directory.is_empty() {
                format!("/{file}")
            } else {
                format!("/{directory}/{file}")
            };
            packages.entry(name.clone()).or_default().push(path);
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apk_files_are_joined_to_their_directories() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nF:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\nR:libc.musl-x86_64.so.1\n\
                  \nP:busybox\nV:1.36.1-r5\nF:bin\nR:busybox\nF:etc\nR:securetty\n";
        let packages = parse_apk(db);
        assert_eq!(
            packages["musl"],
            ["/lib/ld-musl-x86_64.so.1", "/lib/libc.musl-x86_64.so.1"]
        );
        assert_eq!(packages["busybox"], ["/bin/busybox", "/etc/securetty"]);
    }
}
