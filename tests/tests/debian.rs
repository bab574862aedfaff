//! The headline scenario with a real distribution: a container of Debian
//! bookworm (`debootstrap --variant=minbase`, what Debian's container images
//! hold, as the overlay's lower layer) runs its shell, package tools and
//! perl without an event; then packages are installed into the running
//! container with `dpkg -i` (their files land in the upper layer), and what
//! they bring is drift: `wget`'s program, and the maintainer script of a
//! package that has one (`less`'s preinst, which dpkg extracts and runs
//! before unpacking).
//!
//! The image and the packages come from `cargo xtask setup`
//! (`require::debian`). The tests of one backend share its running agent,
//! as in bypass.rs.

use std::path::Path;

use enforcer_tests::{
    agent::Agent,
    container::{Image, Run, Volume},
    require,
    scenario::{assert_event, events, lsm, run_observed, signal},
};

/// Run by the image's `/bin/sh` (dash) with the `PATH` of Debian's
/// container images. `wget` is run from bash, the shell people use in such
/// containers, which execs the first match on `PATH` once (dash would try
/// `/usr/bin/wget` and `/bin/wget`, the same file, one after the other).
const SCENARIO: &str = r#"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
bash -c 'echo bash-ran'
dpkg --version >/dev/null && echo dpkg-ran
apt-get --version | grep -q '^apt ' && echo apt-get-ran
apt-cache policy >/dev/null && echo apt-cache-ran
perl -e 'print "perl-ran\n"'
dpkg -i /debs/libpsl5_*.deb /debs/wget_*.deb
echo "wget-dpkg-rc=$?"
echo "wget-status=$(dpkg-query -W -f='${Status}' wget)"
echo "wget-ino=$(stat -c %i /usr/bin/wget)"
bash -c 'wget --version'
echo "wget-rc=$?"
dpkg -i /debs/less_*.deb
echo "less-dpkg-rc=$?"
echo "less-status=$(dpkg-query -W -f='${Status}' less)"
test -e /usr/bin/less && echo less-unpacked
bash -c 'echo image-still-ok'
"#;

/// What a backend does to drift.
#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    decision: &'static str,
    /// bash's status for a refused program: 126 for an exec that failed
    /// with `EPERM`, 128 + `SIGKILL` for one killed before it ran.
    refused_status: &'static str,
}

const LSM: Backend = Backend {
    name: "lsm",
    decision: "blocked",
    refused_status: "126",
};
const SIGNAL: Backend = Backend {
    name: "signal",
    decision: "killed",
    refused_status: "137",
};

fn check(agent: &Agent, backend: Backend, debian: &Path) {
    // The image is used where setup left it: the container writes to its
    // upper layer only.
    let image = Image::from_root(&debian.join("root"));
    let debs = [Volume {
        host: debian.join("debs"),
        at: "/debs".to_owned(),
        read_only: true,
    }];
    let (run, observed) = run_observed(agent, &image, &debs, SCENARIO);
    let lines: Vec<&str> = run.stdout.lines().collect();
    for marker in [
        "bash-ran",
        "dpkg-ran",
        "apt-get-ran",
        "apt-cache-ran",
        "perl-ran",
        "image-still-ok",
    ] {
        assert!(lines.contains(&marker), "{marker} missing: {run:#?}");
    }

    // Neither package has maintainer scripts: dpkg unpacks and configures
    // them, and runs libc-bin's ldconfig trigger, all with image programs.
    assert_eq!(run.value("wget-dpkg-rc"), Some("0"), "{run:#?}");
    assert_eq!(
        run.value("wget-status"),
        Some("install ok installed"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("GNU Wget"), "wget ran: {run:#?}");
    assert_eq!(
        run.value("wget-rc"),
        Some(backend.refused_status),
        "{run:#?}"
    );

    // The new package's preinst is drift: dpkg gives up on the package
    // before unpacking anything.
    assert_eq!(run.value("less-dpkg-rc"), Some("1"), "{run:#?}");
    assert!(
        run.stderr
            .contains("new less package pre-installation script subprocess"),
        "{run:#?}"
    );
    assert_eq!(
        run.value("less-status"),
        Some("install ok not-installed"),
        "{run:#?}"
    );
    assert!(!lines.contains(&"less-unpacked"), "{run:#?}");

    let events = events(&observed, backend.name);
    assert_eq!(
        events.len(),
        2,
        "only wget and less's preinst are drift: {events:#?}\n{run:#?}\n{}",
        observed.log
    );
    let (wget, preinst) = (events[0], events[1]);
    assert_event(wget, "exec", "overlay-upper", "wget", backend.decision);
    assert_eq!(wget["file"]["path"], "/usr/bin/wget", "{wget:#}");
    assert_eq!(
        wget["file"]["inode"].as_str(),
        run.value("wget-ino"),
        "{wget:#}"
    );
    // bash runs a lone command in its own process: the script's shell
    // is the parent.
    assert_eq!(wget["process"]["parent"]["name"], "sh", "{wget:#}");
    assert_event(
        preinst,
        "exec",
        "overlay-upper",
        "preinst",
        backend.decision,
    );
    assert_eq!(
        preinst["file"]["path"], "/var/lib/dpkg/tmp.ci/preinst",
        "{preinst:#}"
    );
    assert_eq!(preinst["process"]["parent"]["name"], "dpkg", "{preinst:#}");
    check_refusal_seen(&run, backend);
}

/// What the container's programs said about the refusals.
fn check_refusal_seen(run: &Run, backend: Backend) {
    let expected: &[&str] = if backend.name == LSM.name {
        &[
            "wget: Operation not permitted",
            "unable to execute new less package pre-installation script \
             (/var/lib/dpkg/tmp.ci/preinst): Operation not permitted",
        ]
    } else {
        &["pre-installation script subprocess was killed by signal (Killed)"]
    };
    for text in expected {
        assert!(run.stderr.contains(text), "{text:?} missing: {run:#?}");
    }
}

#[test]
fn lsm_packages_installed_in_a_running_debian_container_are_drift() {
    let Some(debian) = require::debian() else {
        return;
    };
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check(&agent, LSM, &debian);
}

#[test]
fn signal_packages_installed_in_a_running_debian_container_are_drift() {
    let Some(debian) = require::debian() else {
        return;
    };
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check(&agent, SIGNAL, &debian);
}
