//! vShields: files a policy shields from being executed, opened or loaded,
//! in containers (found in the image's layer, so containers started after
//! the agent are covered) and on the host.
//!
//! The lsm tests need BPF LSM (the VMs of `cargo xtask test`); the signal
//! tests also run on the host kernel.

use std::{
    fmt::Write as _, fs, os::unix::process::ExitStatusExt as _, path::Path, process::Command,
};

use enforcer_tests::{
    agent::Stopped,
    container::{Image, Scratch},
    require,
    scenario::{run_under, start, start_lsm},
    serial,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// The busybox image with the probe and three vulnerable files: a program,
/// a configuration file and a library (`/opt/vuln/*.so`; the directory
/// `/opt/vuln/bin` is not matched by that glob).
fn image() -> Image {
    let image = Image::with_dynamic(Path::new(PROBE), "probe").expect("building the image");
    let root = image.root();
    // Named busybox, which picks its applet from the name it runs under.
    fs::create_dir_all(root.join("opt/vuln/bin")).expect("creating /opt/vuln/bin");
    fs::copy(root.join("bin/busybox"), root.join("opt/vuln/bin/busybox"))
        .expect("adding the program");
    fs::create_dir_all(root.join("etc")).expect("creating /etc");
    fs::write(root.join("etc/secret.conf"), "password=hunter2\n").expect("adding /etc/secret.conf");
    fs::create_dir_all(root.join("opt/vuln")).expect("creating /opt/vuln");
    let library = image
        .library("libgcc_s")
        .expect("the image has libgcc_s")
        .trim_start_matches('/');
    fs::copy(root.join(library), root.join("opt/vuln/libvuln.so")).expect("adding the library");
    image
}

/// Three vShields, one per operation, in `mode`, for every container.
fn policy(dir: &Path, mode: &str) -> String {
    let shield = |name: &str, files: &str, operation: &str| {
        format!(
            "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: {name}
spec:
  vulnerability: CVE-2099-{number}
  mode: {mode}
  files: [{files}]
  operations: [{operation}]
",
            number = 1000 + name.len()
        )
    };
    let text = [
        shield("vuln-exec", "/opt/vuln/bin/busybox", "exec"),
        shield("vuln-config", "/etc/secret*.conf", "open"),
        shield("vuln-library", "/opt/vuln/*.so", "load"),
    ]
    .join("---\n");
    let path = dir.join(format!("vshields-{mode}.yaml"));
    fs::write(&path, text).expect("writing the policy");
    path.display().to_string()
}

/// The vShield events among the agent's output, after checking it exited 0.
fn vshield_events(stopped: &Stopped) -> Vec<&Value> {
    assert!(
        stopped.status.success(),
        "agent exit {:?}; log:\n{}",
        stopped.status,
        stopped.stderr
    );
    stopped
        .events
        .iter()
        .filter(|event| event["rule"]["category"] == "vshield")
        .collect()
}

fn named<'a>(events: &[&'a Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .copied()
        .filter(|event| event["rule"]["name"] == name)
        .collect()
}

/// Uses each vulnerable file, then copies the configuration file up (chmod)
/// and opens it again; image programs keep working.
const SCRIPT: &str = "/opt/vuln/bin/busybox echo exec-ran
    cat /etc/secret.conf && echo open-ran
    /bin/probe dlopen /opt/vuln/libvuln.so && echo load-ran
    chmod 600 /etc/secret.conf
    cat /etc/secret.conf && echo copied-up-open-ran
    /bin/probe say image-ok";

#[test]
fn enforced_vshields_block_exec_open_and_load_also_after_copy_up() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    let dir = Scratch::new("vshield-enforce").expect("scratch");
    let policy = policy(dir.path(), "enforce");
    let store = image.root().display().to_string();
    let Some(agent) = start_lsm(&["--policy", &policy, "--image-store", &store]) else {
        return;
    };
    let (run, stopped) = run_under(agent, &image, &[], SCRIPT);
    for used in ["exec-ran", "open-ran", "load-ran", "copied-up-open-ran"] {
        assert!(
            !run.stdout.lines().any(|line| line == used),
            "{used}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    assert!(
        run.stdout.contains("image-ok"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let events = vshield_events(&stopped);

    let exec = named(&events, "vuln-exec");
    assert_eq!(exec.len(), 1, "{events:#?}");
    assert_eq!(exec[0]["enforcer"]["decision"], "blocked");
    assert_eq!(exec[0]["enforcer"]["via"], "exec");
    assert_eq!(exec[0]["vulnerability"]["id"], "CVE-2099-1009");
    assert_eq!(exec[0]["file"]["path"], "/opt/vuln/bin/busybox");

    // Before and after the copy-up: one event per open, none for the
    // layer file overlayfs opens underneath.
    let open = named(&events, "vuln-config");
    assert_eq!(open.len(), 2, "{events:#?}\n{}", stopped.stderr);
    for event in &open {
        assert_eq!(event["event"]["action"], "open-denied");
        assert_eq!(event["file"]["path"], "/etc/secret.conf");
        assert_eq!(event["file"]["name"], "secret.conf");
    }

    let load = named(&events, "vuln-library");
    assert_eq!(load.len(), 1, "{events:#?}");
    assert_eq!(load[0]["enforcer"]["via"], "mmap");
    assert_eq!(load[0]["file"]["path"], "/opt/vuln/libvuln.so");
    assert_eq!(events.len(), 4, "{events:#?}");
}

#[test]
fn audit_vshields_only_report() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    let dir = Scratch::new("vshield-audit").expect("scratch");
    let policy = policy(dir.path(), "audit");
    let store = image.root().display().to_string();
    let Some(agent) = start_lsm(&["--policy", &policy, "--image-store", &store]) else {
        return;
    };
    let (run, stopped) = run_under(agent, &image, &[], SCRIPT);
    for used in [
        "exec-ran",
        "open-ran",
        "load-ran",
        "copied-up-open-ran",
        "image-ok",
    ] {
        assert!(
            run.stdout.lines().any(|line| line == used),
            "{used}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    let events = vshield_events(&stopped);
    assert!(
        events
            .iter()
            .all(|event| event["enforcer"]["decision"] == "audit"),
        "{events:#?}"
    );
    assert_eq!(named(&events, "vuln-exec").len(), 1, "{events:#?}");
    assert_eq!(named(&events, "vuln-config").len(), 2, "{events:#?}");
    // The loader maps a library with one or more executable mappings.
    assert!(!named(&events, "vuln-library").is_empty(), "{events:#?}");
}

#[test]
fn the_signal_backend_kills_execs_of_shielded_files_and_says_what_it_cannot_decide() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    let dir = Scratch::new("vshield-signal").expect("scratch");
    let policy = policy(dir.path(), "enforce");
    let store = image.root().display().to_string();
    let agent = start(&[
        "--backend",
        "signal",
        "--policy",
        &policy,
        "--image-store",
        &store,
    ]);
    let (run, stopped) = run_under(
        agent,
        &image,
        &[],
        "/opt/vuln/bin/busybox echo exec-ran; echo status=$?; /bin/probe say image-ok",
    );
    assert!(!run.stdout.contains("exec-ran"), "{}", run.stdout);
    assert!(run.stdout.contains("status=137"), "{}", run.stdout);
    assert!(run.stdout.contains("image-ok"), "{}", run.stdout);
    let events = vshield_events(&stopped);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["enforcer"]["decision"], "killed");
    assert_eq!(events[0]["rule"]["name"], "vuln-exec");
    assert!(
        stopped
            .stderr
            .contains("opens and library loads of shielded files are NOT decided on this kernel"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn host_vshields_cover_host_processes_only() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let dir = Scratch::new("vshield-host").expect("scratch");
    // Named busybox, which picks its applet from the name it runs under.
    let tool = dir.path().join("busybox");
    fs::copy("/bin/busybox", &tool).expect("copying busybox");
    let policy = dir.path().join("host.yaml");
    fs::write(
        &policy,
        format!(
            "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: host-tool
spec:
  vulnerability: GHSA-abcd-efgh-ijkl
  selector: {{host: true}}
  mode: enforce
  files: [{}]
  operations: [exec]
",
            tool.display()
        ),
    )
    .expect("writing the policy");
    let agent = start(&[
        "--backend",
        "signal",
        "--policy",
        &policy.display().to_string(),
    ]);
    let status = Command::new(&tool)
        .args(["echo", "ran"])
        .status()
        .expect("running the tool");
    // The same file in a container is not the host's business.
    let image = Image::busybox().expect("building the image");
    fs::create_dir_all(image.root().join("opt")).expect("creating /opt");
    fs::copy(&tool, image.root().join("opt/busybox")).expect("copying the tool into the image");
    let (run, stopped) = run_under(agent, &image, &[], "/opt/busybox echo container-ran");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(
        run.stdout.contains("container-ran"),
        "{}{}{:#?}",
        run.stdout,
        run.stderr,
        stopped.events
    );
    let events = vshield_events(&stopped);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["vulnerability"]["enumeration"], "GHSA");
    assert_eq!(events[0]["rule"]["name"], "host-tool");
}

/// A Trivy report of the image: an OS package (its files in the image's
/// dpkg database), a jar, and a finding with a distribution-only id.
const TRIVY_REPORT: &str = r#"{
  "SchemaVersion": 2,
  "ArtifactName": "localhost/vuln:1",
  "ArtifactType": "container_image",
  "Results": [
    {"Target": "localhost/vuln:1 (debian 12.5)", "Class": "os-pkgs", "Type": "debian",
     "Vulnerabilities": [
       {"VulnerabilityID": "CVE-2099-3001", "PkgName": "vulnpkg", "InstalledVersion": "1.0-1",
        "FixedVersion": "1.0-2", "Severity": "CRITICAL", "Title": "remote code execution"},
       {"VulnerabilityID": "TEMP-0000001-ABCDEF", "PkgName": "vulnpkg", "Severity": "LOW"}
     ]},
    {"Target": "Java", "Class": "lang-pkgs", "Type": "jar",
     "Vulnerabilities": [
       {"VulnerabilityID": "CVE-2021-44228", "PkgName": "org.apache.logging.log4j:log4j-core",
        "PkgPath": "app/lib/log4j-core-2.14.1.jar", "InstalledVersion": "2.14.1",
        "FixedVersion": "2.15.0", "Severity": "CRITICAL"}
     ]}
  ]
}"#;

#[test]
fn a_trivy_report_becomes_a_policy_that_shields_the_vulnerable_packages_files() {
    let _serial = serial();
    // The exec vShield it writes is decided as in
    // `enforced_vshields_block_exec_open_and_load_also_after_copy_up`.
    if !require::root() || !require::not_other_kernel("from-trivy writes a policy") {
        return;
    }
    let image = image();
    let root = image.root();
    fs::create_dir_all(root.join("var/lib/dpkg/info")).expect("creating the dpkg database");
    fs::create_dir_all(root.join("usr/share/doc/vulnpkg")).expect("creating the doc directory");
    fs::write(root.join("usr/share/doc/vulnpkg/copyright"), "text\n").expect("adding a doc file");
    std::os::unix::fs::symlink("bin/busybox", root.join("opt/vuln/link"))
        .expect("adding a symlink");
    fs::write(
        root.join("var/lib/dpkg/info/vulnpkg.list"),
        "/.\n/opt\n/opt/vuln\n/opt/vuln/bin\n/opt/vuln/bin/busybox\n/opt/vuln/libvuln.so\n\
         /opt/vuln/link\n/usr/share/doc/vulnpkg/copyright\n",
    )
    .expect("adding the package's file list");
    fs::create_dir_all(root.join("app/lib")).expect("creating /app/lib");
    fs::write(root.join("app/lib/log4j-core-2.14.1.jar"), "PK\n").expect("adding the jar");
    let dir = Scratch::new("vshield-trivy").expect("scratch");
    let report = dir.path().join("report.json");
    fs::write(&report, TRIVY_REPORT).expect("writing the report");
    let policy = dir.path().join("trivy.yaml");
    let policy_path = policy.display().to_string();
    let output = from_trivy(
        &["--mode", "enforce", "--every-container", "-o", &policy_path],
        root,
        &report,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TEMP-0000001-ABCDEF") && stderr.contains("not a CVE or GHSA id"),
        "{stderr}"
    );
    let text = fs::read_to_string(&policy).expect("reading the written policy");
    assert_names(
        &text,
        &[
            ("/opt/vuln/bin/busybox", true),
            ("/opt/vuln/libvuln.so", true),
            ("/app/lib/log4j-core-2.14.1.jar", true),
            ("/opt/vuln/link", false),
            ("/usr/share/doc/vulnpkg/copyright", false),
        ],
    );

    let store = root.display().to_string();
    let agent = start(&[
        "--policy",
        &policy.display().to_string(),
        "--image-store",
        &store,
    ]);
    let (run, stopped) = run_under(
        agent,
        &image,
        &[],
        "/opt/vuln/bin/busybox echo exec-ran; /bin/probe say image-ok",
    );
    assert!(!run.stdout.contains("exec-ran"), "{}", run.stdout);
    assert!(
        run.stdout.contains("image-ok"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let events = vshield_events(&stopped);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["rule"]["name"], "cve-2099-3001-vulnpkg");
    assert_eq!(events[0]["vulnerability"]["id"], "CVE-2099-3001");
}

/// An rpm package with a program, a library, a symlink and a `%doc` file.
const RPM_SPEC: &str = "Name: vulnpkg
Version: 1.2.3
Release: 1
Summary: a package with a vulnerability
License: MIT
BuildArch: noarch
%description
A package with a vulnerability.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/doc/vulnpkg %{buildroot}/usr/lib/vulnpkg
printf '#!/bin/sh\\necho vuln\\n' > %{buildroot}/usr/bin/vulnprog
chmod 755 %{buildroot}/usr/bin/vulnprog
echo library > %{buildroot}/usr/lib/vulnpkg/libvuln.so
ln -s ../lib/vulnpkg/libvuln.so %{buildroot}/usr/bin/vulnlink
echo readme > %{buildroot}/usr/share/doc/vulnpkg/README
%files
/usr/bin/vulnprog
/usr/bin/vulnlink
/usr/lib/vulnpkg
%doc /usr/share/doc/vulnpkg/README
";

const RPM_REPORT: &str = r#"{
  "SchemaVersion": 2,
  "ArtifactName": "localhost/rocky-app:1",
  "ArtifactType": "container_image",
  "Results": [
    {"Target": "localhost/rocky-app:1 (rocky 9.3)", "Class": "os-pkgs", "Type": "rocky",
     "Vulnerabilities": [
       {"VulnerabilityID": "CVE-2099-4001", "PkgName": "vulnpkg", "InstalledVersion": "1.2.3-1",
        "FixedVersion": "1.2.4-1", "Severity": "HIGH"}
     ]}
  ]
}"#;

/// The package of [`RPM_SPEC`], built with rpmbuild and installed into
/// `dir/root` as a Rocky or Fedora image has it: rpm's `SQLite` database in
/// /var/lib/rpm. `None` unless run as root, and in the emulated VMs.
fn rpm_image(dir: &Scratch) -> Option<std::path::PathBuf> {
    // rpmbuild, rpm and reading the database are userspace alone, and slow
    // under emulation.
    if !require::root() || !require::not_emulated("rpm databases") {
        return None;
    }
    let rpmbuild = require::program("/usr/bin/rpmbuild", "rpm");
    let spec = dir.path().join("vulnpkg.spec");
    fs::write(&spec, RPM_SPEC).expect("writing the spec");
    let top = dir.path().join("top");
    let built = Command::new(rpmbuild)
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("-bb")
        .arg(&spec)
        .output()
        .expect("running rpmbuild");
    assert!(built.status.success(), "rpmbuild: {built:?}");
    let root = dir.path().join("root");
    fs::create_dir_all(&root).expect("creating the image root");
    let installed = Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args([
            "--dbpath",
            "/var/lib/rpm",
            "--install",
            "--nodeps",
            "--noscripts",
        ])
        .arg(top.join("RPMS/noarch/vulnpkg-1.2.3-1.noarch.rpm"))
        .output()
        .expect("running rpm");
    assert!(installed.status.success(), "rpm: {installed:?}");
    assert!(root.join("var/lib/rpm/rpmdb.sqlite").exists());
    Some(root)
}

/// Checks that `from-trivy` finds the package's program and library (not
/// its symlink or `%doc` file) in the database of `root`.
fn check_rpm_files(dir: &Scratch, root: &Path) {
    let report = dir.path().join("report.json");
    fs::write(&report, RPM_REPORT).expect("writing the report");
    let output = from_trivy(&[], root, &report);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("localhost/rocky-app:1"), "{text}");
    assert_names(
        &text,
        &[
            ("/usr/bin/vulnprog", true),
            ("/usr/lib/vulnpkg/libvuln.so", true),
            ("/usr/bin/vulnlink", false),
            ("/usr/share/doc/vulnpkg/README", false),
        ],
    );
}

#[test]
fn an_rpm_database_names_the_files_of_the_vulnerable_package() {
    let _serial = serial();
    let dir = Scratch::new("vshield-rpm").expect("scratch");
    let Some(root) = rpm_image(&dir) else {
        return;
    };
    check_rpm_files(&dir, &root);
}

/// The headers rpm exports (`rpmdb --exportdb`: each with its 8-byte magic
/// before it), as rpm stores them in a database (without it).
fn exported_headers(root: &Path) -> Vec<Vec<u8>> {
    let exported = Command::new("rpmdb")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", "/var/lib/rpm", "--exportdb"])
        .output()
        .expect("running rpmdb --exportdb");
    assert!(exported.status.success(), "rpmdb: {exported:?}");
    let word = |bytes: &[u8], at: usize| {
        u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
    };
    let mut rest = exported.stdout.as_slice();
    let mut headers = Vec::new();
    while rest.len() >= 16 {
        assert_eq!(rest[..3], [0x8e, 0xad, 0xe8], "header magic");
        let size = 16 + 16 * word(rest, 8) + word(rest, 12);
        headers.push(rest[8..size].to_vec());
        rest = &rest[size..];
    }
    assert!(
        rest.is_empty() && !headers.is_empty(),
        "rpmdb --exportdb output"
    );
    headers
}

#[test]
fn an_rpm_berkeley_db_names_the_files_of_the_vulnerable_package() {
    let _serial = serial();
    let dir = Scratch::new("vshield-rpm-bdb").expect("scratch");
    let Some(root) = rpm_image(&dir) else {
        return;
    };
    let load = require::program("/usr/bin/db5.3_load", "db5.3-util");
    let headers = exported_headers(&root);
    fs::remove_file(root.join("var/lib/rpm/rpmdb.sqlite")).expect("removing rpmdb.sqlite");
    // rpm before 4.16 kept the same headers in a Berkeley DB hash file, keyed
    // by instance number (native-endian), with the next instance number
    // under key 0. Written here by the Berkeley DB library itself: with
    // 512-byte pages a header spans a chain of overflow pages, with 64 KiB
    // pages it sits on the hash page.
    for page_size in [512, 65_536] {
        let mut dump = format!(
            "VERSION=3\nformat=bytevalue\ntype=hash\ndb_pagesize={page_size}\nHEADER=END\n"
        );
        let next = u32::try_from(headers.len() + 1).expect("few headers");
        let mut records = vec![(0_u32.to_ne_bytes().to_vec(), next.to_ne_bytes().to_vec())];
        for (instance, header) in (1_u32..).zip(&headers) {
            records.push((instance.to_ne_bytes().to_vec(), header.clone()));
        }
        for (key, value) in &records {
            for bytes in [key, value] {
                dump.push(' ');
                for byte in bytes {
                    let _ = write!(dump, "{byte:02x}");
                }
                dump.push('\n');
            }
        }
        dump.push_str("DATA=END\n");
        let input = dir.path().join(format!("dump-{page_size}"));
        fs::write(&input, dump).expect("writing the dump");
        let packages = root.join("var/lib/rpm/Packages");
        let _ = fs::remove_file(&packages);
        let loaded = Command::new(load)
            .arg("-f")
            .arg(&input)
            .arg(&packages)
            .output()
            .expect("running db_load");
        assert!(loaded.status.success(), "db_load: {loaded:?}");
        check_rpm_files(&dir, &root);
    }
}

/// `enforcer vshield from-trivy ARGS --root ROOT REPORT`, checked to
/// succeed.
fn from_trivy(args: &[&str], root: &Path, report: &Path) -> std::process::Output {
    let output = Command::new(enforcer_tests::agent::binary())
        .args(["vshield", "from-trivy"])
        .args(args)
        .arg("--root")
        .arg(root)
        .arg(report)
        .output()
        .expect("running enforcer vshield from-trivy");
    assert!(output.status.success(), "{output:?}");
    output
}

/// Whether the generated policy names each file (quoted, as it writes them).
fn assert_names(policy: &str, files: &[(&str, bool)]) {
    for (file, listed) in files {
        assert_eq!(
            policy.contains(&format!("\"{file}\"")),
            *listed,
            "{file}:\n{policy}"
        );
    }
}
