//! Allowed paths: globs over a file's path in its container, compiled into
//! the automaton the kernel programs run over the path bytes (`PATH_DFA`).
//!
//! Glob syntax is globset's with literal separators: `*`, `?` and `[...]`
//! stay within one path component, `**` spans components, `{a,b}` is either.
//! The kernel matches the file's real path (symlinks resolved, as the
//! kernel reached the file) in the container's mount namespace.

use std::collections::{HashMap, VecDeque};

use enforcer_common::{PATH_DFA_STATES_MAX, PATH_MAX_LEN, PathDfaState, path_dfa};
use regex_automata::{
    Anchored, MatchKind,
    dfa::{Automaton as _, StartKind, dense},
    nfa::thompson,
    util::{primitives::StateID, start, syntax},
};

#[derive(Debug, thiserror::Error)]
pub enum PathGlobError {
    #[error("allowed path {glob:?} is not a valid glob: {reason}")]
    Invalid { glob: String, reason: String },
    #[error("allowed path {glob:?} is not absolute: a file's path in its container starts with /")]
    NotAbsolute { glob: String },
    #[error(
        "allowed path {glob:?} is longer than {PATH_MAX_LEN} bytes, the longest path the kernel programs build"
    )]
    TooLong { glob: String },
    #[error(
        "the allowed paths compile to more than {PATH_DFA_STATES_MAX} automaton states (the kernel map's size); \
         use fewer or simpler globs"
    )]
    TooManyStates,
    #[error("compiling the allowed paths into an automaton: {0}")]
    Build(String),
    #[error("{sets} DriftPolicies with allowed paths: at most 32 share the kernel's automaton")]
    TooManySets { sets: usize },
}

/// Compiles `globs` into automaton states: index [`path_dfa::DEAD`] rejects
/// everything, [`path_dfa::START`] is where a path starts. Pure.
///
/// # Errors
/// A glob that is invalid, relative or too long, or globs that together
/// need more states than the kernel map holds.
pub fn compile(globs: &[String]) -> Result<Vec<PathDfaState>, PathGlobError> {
    compile_sets(&[globs])
}

/// Compiles several sets of globs into one automaton whose accepting states
/// say which sets accept: bit `i` of [`PathDfaState::accept`] for `sets[i]`
/// (at most 32 sets; an empty set accepts nothing). Pure.
///
/// # Errors
/// As [`compile`]; more than 32 sets.
pub fn compile_sets(sets: &[&[String]]) -> Result<Vec<PathDfaState>, PathGlobError> {
    if sets.len() > 32 {
        return Err(PathGlobError::TooManySets { sets: sets.len() });
    }
    // One pattern per set, not one per glob: the states of different
    // patterns are never merged (their matches carry different pattern
    // ids), and the kernel only needs to know whether any glob of a set
    // matched.
    let mut patterns = Vec::new();
    let mut bits = Vec::new();
    for (bit, globs) in sets.iter().enumerate() {
        if globs.is_empty() {
            continue;
        }
        let regex = globs
            .iter()
            .map(|glob| glob_regex(glob).map(|regex| format!("(?:{regex})")))
            .collect::<Result<Vec<_>, _>>()?
            .join("|");
        patterns.push(regex);
        bits.push(1u32 << bit);
    }
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                // Every glob is anchored at both ends; `All` keeps every
                // path that a glob could still match alive, and reports
                // every pattern that matched.
                .match_kind(MatchKind::All)
                .minimize(true),
        )
        // Paths are bytes, not necessarily UTF-8.
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false))
        .build_many(&patterns)
        .map_err(|error| PathGlobError::Build(error.to_string()))?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|error| PathGlobError::Build(error.to_string()))?;
    table(&dfa, start, &bits)
}

/// Renumbers the DFA's states reachable from `start` densely, dead first.
/// `bits[p]` is the accept bit of pattern `p`.
fn table(
    dfa: &dense::DFA<Vec<u32>>,
    start: StateID,
    bits: &[u32],
) -> Result<Vec<PathDfaState>, PathGlobError> {
    let mut index: HashMap<StateID, u16> = HashMap::new();
    index.insert(start, path_dfa::START);
    let mut queue = VecDeque::from([start]);
    let mut states = vec![PathDfaState::default(); 2];
    while let Some(id) = queue.pop_front() {
        // A match state means "the input up to the previous byte matched":
        // whether a path ending here is allowed is decided by the
        // end-of-input transition.
        let eoi = dfa.next_eoi_state(id);
        let accept = if dfa.is_match_state(eoi) {
            (0..dfa.match_len(eoi))
                .map(|index| bits[dfa.match_pattern(eoi, index).as_usize()])
                .fold(0, |accept, bit| accept | bit)
        } else {
            0
        };
        let mut state = PathDfaState {
            accept,
            ..PathDfaState::default()
        };
        for byte in 0..=u8::MAX {
            let next = dfa.next_state(id, byte);
            if dfa.is_dead_state(next) || dfa.is_quit_state(next) {
                continue;
            }
            let slot = if let Some(&slot) = index.get(&next) {
                slot
            } else {
                let slot = u16::try_from(states.len())
                    .ok()
                    .filter(|&slot| u32::from(slot) < PATH_DFA_STATES_MAX)
                    .ok_or(PathGlobError::TooManyStates)?;
                index.insert(next, slot);
                states.push(PathDfaState::default());
                queue.push_back(next);
                slot
            };
            state.next[usize::from(byte)] = slot;
        }
        states[usize::from(index[&id])] = state;
    }
    Ok(states)
}

/// The regular expression for one glob, after the checks the kernel's
/// path building implies.
fn glob_regex(glob: &str) -> Result<String, PathGlobError> {
    if !glob.starts_with('/') {
        return Err(PathGlobError::NotAbsolute {
            glob: glob.to_owned(),
        });
    }
    if glob.len() > PATH_MAX_LEN {
        return Err(PathGlobError::TooLong {
            glob: glob.to_owned(),
        });
    }
    let parsed = globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|error| PathGlobError::Invalid {
            glob: glob.to_owned(),
            reason: error.kind().to_string(),
        })?;
    Ok(parsed.regex().to_owned())
}

/// Runs `path` through `states` exactly as the kernel programs do
/// (`enforcer-ebpf/src/path.rs`): byte by byte from [`path_dfa::START`],
/// stopping at [`path_dfa::DEAD`], accepting when the last state's accept
/// bits include all of `mask`.
pub fn accepts_for(states: &[PathDfaState], path: &[u8], mask: u32) -> bool {
    if path.len() > PATH_MAX_LEN || mask == 0 {
        return false;
    }
    let mut state = path_dfa::START;
    for &byte in path {
        let Some(row) = states.get(usize::from(state)) else {
            return false;
        };
        state = row.next[usize::from(byte)];
        if state == path_dfa::DEAD {
            return false;
        }
    }
    states
        .get(usize::from(state))
        .is_some_and(|row| row.accept & mask == mask)
}

/// [`accepts_for`] the automaton of a single set of globs.
pub fn accepts(states: &[PathDfaState], path: &[u8]) -> bool {
    accepts_for(states, path, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(globs: &[&str]) -> Vec<PathDfaState> {
        compile(&globs.iter().map(|&g| g.to_owned()).collect::<Vec<_>>()).expect("globs compile")
    }

    #[test]
    fn sets_share_one_automaton_with_a_bit_each() {
        let ci = vec!["/workspace/**".to_owned(), "/tmp/build-*".to_owned()];
        let plugins = vec![
            "/opt/app/plugins/*.so".to_owned(),
            "/workspace/tools/*".to_owned(),
        ];
        let none: Vec<String> = Vec::new();
        let states = compile_sets(&[&ci, &none, &plugins]).unwrap();
        assert!(accepts_for(&states, b"/workspace/a/b", 0b001));
        assert!(!accepts_for(&states, b"/workspace/a/b", 0b100));
        assert!(accepts_for(&states, b"/opt/app/plugins/x.so", 0b100));
        assert!(!accepts_for(&states, b"/opt/app/plugins/x.so", 0b001));
        // Both sets allow it: allowed for each, and for both together (the
        // strictest combination asks all of them).
        assert!(accepts_for(&states, b"/workspace/tools/t", 0b101));
        assert!(!accepts_for(&states, b"/workspace/a/b", 0b101));
        // The empty set's bit is never set; no mask allows nothing.
        assert!(!accepts_for(&states, b"/workspace/a/b", 0b010));
        assert!(!accepts_for(&states, b"/workspace/a/b", 0));
        let many: Vec<&[String]> = (0..33).map(|_| ci.as_slice()).collect();
        assert!(matches!(
            compile_sets(&many),
            Err(PathGlobError::TooManySets { sets: 33 })
        ));
    }

    #[test]
    fn star_stays_within_one_component() {
        let states = compiled(&["/app/plugins/*.so"]);
        assert!(accepts(&states, b"/app/plugins/libx.so"));
        assert!(accepts(&states, b"/app/plugins/.so"));
        assert!(!accepts(&states, b"/app/plugins/sub/libx.so"));
        assert!(!accepts(&states, b"/app/plugins/libx.so.1"));
        assert!(!accepts(&states, b"/app/plugins"));
        assert!(!accepts(&states, b"/tmp/app/plugins/libx.so"));
    }

    #[test]
    fn double_star_spans_components() {
        let states = compiled(&["/opt/tools/**"]);
        assert!(accepts(&states, b"/opt/tools/a"));
        assert!(accepts(&states, b"/opt/tools/a/b/c"));
        assert!(!accepts(&states, b"/opt/toolsx/a"));
        assert!(!accepts(&states, b"/opt/other/a"));
        let states = compiled(&["/srv/**/bin/*"]);
        assert!(accepts(&states, b"/srv/bin/x"));
        assert!(accepts(&states, b"/srv/a/b/bin/x"));
        assert!(!accepts(&states, b"/srv/a/bin/x/y"));
    }

    #[test]
    fn classes_alternatives_and_literal_paths() {
        let states = compiled(&["/usr/local/bin/tool-{a,b}", "/data/run?.[sp]h", "/exact"]);
        assert!(accepts(&states, b"/usr/local/bin/tool-a"));
        assert!(accepts(&states, b"/usr/local/bin/tool-b"));
        assert!(!accepts(&states, b"/usr/local/bin/tool-c"));
        assert!(accepts(&states, b"/data/run1.sh"));
        assert!(accepts(&states, b"/data/run2.ph"));
        assert!(!accepts(&states, b"/data/run/.sh"));
        assert!(accepts(&states, b"/exact"));
        assert!(!accepts(&states, b"/exact/"));
        assert!(!accepts(&states, b"/exactly"));
    }

    #[test]
    fn paths_are_bytes_not_utf8() {
        let states = compiled(&["/bin/*"]);
        assert!(accepts(&states, b"/bin/\xff\xfe"));
        assert!(!accepts(&states, b"/bin/\xff/x"));
    }

    #[test]
    fn agrees_with_globset_on_many_paths() {
        let globs = [
            "/app/**/*.so",
            "/opt/*/bin/[a-c]*",
            "/x/{y,z}/**",
            "/tmp/jni-?/*",
        ];
        let states = compiled(&globs);
        let set = {
            let mut builder = globset::GlobSetBuilder::new();
            for glob in globs {
                builder.add(
                    globset::GlobBuilder::new(glob)
                        .literal_separator(true)
                        .build()
                        .unwrap(),
                );
            }
            builder.build().unwrap()
        };
        let parts = [
            "app", "opt", "x", "y", "z", "bin", "a", "b1", "d", "lib.so", "tmp", "jni-1", "jni-12",
            "",
        ];
        let mut checked = 0;
        // Every path of up to four components drawn from `parts`.
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let mut longer = Vec::new();
            for path in &paths {
                for part in parts {
                    let candidate = format!("{path}/{part}");
                    assert_eq!(
                        accepts(&states, candidate.as_bytes()),
                        set.is_match(&candidate),
                        "{candidate}"
                    );
                    checked += 1;
                    longer.push(candidate);
                }
            }
            paths = longer;
        }
        assert!(checked > 40_000);
    }

    #[test]
    fn bad_globs_are_named() {
        let error = compile(&["relative/*".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("\"relative/*\""), "{error}");
        assert!(error.to_string().contains("not absolute"), "{error}");
        let error = compile(&["/a/[b".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("\"/a/[b\""), "{error}");
        assert!(error.to_string().contains("not a valid glob"), "{error}");
        let error = compile(&[format!("/{}", "a".repeat(PATH_MAX_LEN))]).unwrap_err();
        assert!(matches!(error, PathGlobError::TooLong { .. }), "{error}");
    }

    #[test]
    fn automata_larger_than_the_map_are_refused() {
        // Distinct literal paths share little; enough of them need more
        // states than a bank holds.
        let globs: Vec<String> = (0..400).map(|i| format!("/p/{i:05x}/q{i}")).collect();
        assert!(matches!(compile(&globs), Err(PathGlobError::TooManyStates)));
        // A realistic list fits easily.
        let globs: Vec<String> = (0..20)
            .map(|i| format!("/opt/app{i}/plugins/*.so"))
            .collect();
        assert!(compile(&globs).unwrap().len() < 60);
    }

    #[test]
    fn state_zero_rejects_everything() {
        let states = compiled(&["/a"]);
        assert_eq!(states[0], PathDfaState::default());
        assert_eq!(states[0].accept, 0);
        assert!(states[0].next.iter().all(|&next| next == path_dfa::DEAD));
    }
}
