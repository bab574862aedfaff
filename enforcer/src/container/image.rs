//! Container images as policies select them: references (`name:tag`,
//! `name@digest`) and the globs of `spec.selector.images`.

use globset::{GlobBuilder, GlobMatcher};

/// The image a container was created from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository, registry included as the runtime reports it
    /// (`docker.io/library/nginx`, `localhost/app`).
    pub name: String,
    pub tag: Option<String>,
    /// The manifest digest (`sha256:...`), when the runtime knows it.
    pub digest: Option<String>,
    /// The runtime's image id (`sha256:...` or bare hex).
    pub id: Option<String>,
}

impl ImageRef {
    /// Parses a reference: `name`, `name:tag`, `name@digest` or
    /// `name:tag@digest`. A `:` before the last `/` belongs to a registry
    /// port, not a tag. Pure.
    pub fn parse(reference: &str) -> Option<Self> {
        let reference = reference.trim();
        if reference.is_empty() {
            return None;
        }
        let (named, digest) = match reference.split_once('@') {
            Some((named, digest)) => (named, Some(digest.to_owned())),
            None => (reference, None),
        };
        let slash = named.rfind('/').map_or(0, |at| at + 1);
        let (name, tag) = match named[slash..].rfind(':') {
            Some(colon) => (
                &named[..slash + colon],
                Some(named[slash + colon + 1..].to_owned()),
            ),
            None => (named, None),
        };
        if name.is_empty() {
            return None;
        }
        Some(Self {
            name: name.to_owned(),
            tag,
            digest,
            id: None,
        })
    }

    /// `image` (a reference as the runtime resolved it) with what
    /// `image_ref` adds: the digest of `name@sha256:...`, or the runtime's
    /// image id when it is a bare `sha256:...` (not a manifest digest). The
    /// Kubernetes API's `imageID` and the CRI's `image_ref` take both forms,
    /// by runtime. Pure.
    pub fn with_reference(image: &str, image_ref: &str) -> Option<Self> {
        let mut resolved = Self::parse(image)?;
        let image_ref = image_ref.trim();
        let image_ref = image_ref
            .strip_prefix("docker-pullable://")
            .unwrap_or(image_ref);
        if let Some((_, digest)) = image_ref.split_once('@') {
            resolved.digest.get_or_insert_with(|| digest.to_owned());
        } else if !image_ref.is_empty() && image_ref != image {
            resolved.id = Some(image_ref.to_owned());
        }
        Some(resolved)
    }

    /// Fills in what `self` does not say (digest, image id) from `other`,
    /// the same image as another source reports it.
    pub fn complete_from(&mut self, other: &Self) {
        if self.digest.is_none() {
            self.digest.clone_from(&other.digest);
        }
        if self.id.is_none() {
            self.id.clone_from(&other.id);
        }
    }

    /// The names a user may write for this repository: as reported, and
    /// Docker Hub's short forms (`docker.io/library/nginx` is also
    /// `library/nginx` and `nginx`).
    fn names(&self) -> Vec<&str> {
        let mut names = vec![self.name.as_str()];
        if let Some(hub) = self.name.strip_prefix("docker.io/") {
            names.push(hub);
            if let Some(official) = hub.strip_prefix("library/") {
                names.push(official);
            }
        }
        names
    }

    /// The strings a selector glob is matched against: `name:tag` and
    /// `name@digest` for every form of the name.
    pub fn references(&self) -> Vec<String> {
        let mut references = Vec::new();
        for name in self.names() {
            if let Some(tag) = &self.tag {
                references.push(format!("{name}:{tag}"));
            }
            if let Some(digest) = &self.digest {
                references.push(format!("{name}@{digest}"));
            }
            if self.tag.is_none() && self.digest.is_none() {
                references.push(name.to_owned());
            }
        }
        references
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The image globs of one selector (any may match).
#[derive(Clone, Debug)]
pub struct ImageGlobs {
    matchers: Vec<GlobMatcher>,
}

impl ImageGlobs {
    /// Compiles `globs`; `*` also crosses `/` (an image glob is not a path).
    ///
    /// # Errors
    /// The first glob that does not compile, with the reason.
    pub fn new(globs: &[String]) -> Result<Self, (String, String)> {
        let matchers = globs
            .iter()
            .map(|glob| {
                GlobBuilder::new(glob)
                    .literal_separator(false)
                    .build()
                    .map(|glob| glob.compile_matcher())
                    .map_err(|error| (glob.clone(), error.kind().to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { matchers })
    }

    /// Whether one glob matches one of the image's references. Pure.
    pub fn matches(&self, image: &ImageRef) -> bool {
        let references = image.references();
        self.matchers.iter().any(|matcher| {
            references
                .iter()
                .any(|reference| matcher.is_match(reference))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:3f1c9e0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b";

    fn matches(glob: &str, reference: &str) -> bool {
        let image = ImageRef::parse(reference).unwrap();
        ImageGlobs::new(&[glob.to_owned()]).unwrap().matches(&image)
    }

    #[test]
    fn references_parse_with_registry_ports_tags_and_digests() {
        let image = ImageRef::parse("registry.local:5000/team/app:1.2").unwrap();
        assert_eq!(image.name, "registry.local:5000/team/app");
        assert_eq!(image.tag.as_deref(), Some("1.2"));
        let pinned = ImageRef::parse(&format!("docker.io/library/nginx:1.25@{DIGEST}")).unwrap();
        assert_eq!(pinned.name, "docker.io/library/nginx");
        assert_eq!(pinned.tag.as_deref(), Some("1.25"));
        assert_eq!(pinned.digest.as_deref(), Some(DIGEST));
        let bare = ImageRef::parse("registry.local:5000/app").unwrap();
        assert_eq!(
            (bare.name.as_str(), bare.tag),
            ("registry.local:5000/app", None)
        );
        assert_eq!(ImageRef::parse("  "), None);
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/nginx:1.25@{DIGEST}")
        );
    }

    #[test]
    fn globs_match_full_and_docker_hub_short_names_tags_and_digests() {
        let nginx = "docker.io/library/nginx:1.25";
        assert!(matches("nginx:*", nginx));
        assert!(matches("library/nginx:1.25", nginx));
        assert!(matches("docker.io/library/nginx:1.*", nginx));
        assert!(matches("*/nginx:*", nginx));
        assert!(!matches("nginx:1.24", nginx));
        assert!(!matches("nginx", nginx));
        assert!(matches("localhost/one:*", "localhost/one:1"));
        assert!(!matches("one:*", "localhost/one:1"));
        assert!(matches(
            &format!("*@{DIGEST}"),
            &format!("quay.io/app@{DIGEST}")
        ));
        assert!(matches("quay.io/app", "quay.io/app"));
    }

    #[test]
    fn a_bad_glob_is_named() {
        let error = ImageGlobs::new(&["nginx:[".to_owned()]).unwrap_err();
        assert_eq!(error.0, "nginx:[");
    }
}
