//! Serializer negotiation from the connect request's `vsn` query value, as Phoenix
//! does it: a missing vsn selects v1, a version matching `~> 1.0.0` selects v1, one
//! matching `~> 2.0.0` selects v2, anything else is refused (HTTP 403).

use std::fmt;

/// The serializer a connection speaks, fixed at connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// v1 JSON objects (`vsn` 1.0.x, or no `vsn` at all). No binary frames.
    V1,
    /// v2 JSON arrays plus binary frames (`vsn` 2.0.x, phoenix.js's default).
    V2,
}

/// Why a `vsn` was refused; the server answers 403 to every variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsnError {
    /// Not a semantic version (`2`, `2.0`, `x`).
    #[error("vsn {0:?} is not a semantic version")]
    Unparsable(String),
    /// A version no serializer handles (`3.0.0`, `2.1.0`, `2.0.0-rc.1`).
    #[error("vsn {0:?} matches neither ~> 1.0.0 nor ~> 2.0.0")]
    Unsupported(String),
    /// `vsn` given as a nested or list parameter, e.g. `vsn[]=x`.
    #[error("vsn is not a string")]
    NotAString,
}

impl Vsn {
    /// Picks the serializer for a `vsn` query value (`None` when absent).
    pub fn negotiate(vsn: Option<&str>) -> Result<Self, VsnError> {
        let Some(text) = vsn else {
            return Ok(Self::V1);
        };
        let version = Version::parse(text).ok_or_else(|| VsnError::Unparsable(text.to_owned()))?;
        if version.matches_patch_series(1) {
            Ok(Self::V1)
        } else if version.matches_patch_series(2) {
            Ok(Self::V2)
        } else {
            Err(VsnError::Unsupported(text.to_owned()))
        }
    }

    /// Whether this serializer has binary frames.
    pub fn has_binary(self) -> bool {
        self == Self::V2
    }
}

impl fmt::Display for Vsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "1.0.0",
            Self::V2 => "2.0.0",
        })
    }
}

/// The parts of a semantic version that `~> M.0.0` looks at.
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre_release: bool,
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH[-PRE][+BUILD]` strictly (no leading zeros, no
    /// missing parts), like Elixir's `Version.parse/1`.
    fn parse(text: &str) -> Option<Self> {
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        if build.is_some_and(|build| !build.split('.').all(is_identifier)) {
            return None;
        }
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let valid_pre = |id: &str| is_identifier(id) && !is_leading_zero_number(id);
        if pre.is_some_and(|pre| !pre.split('.').all(valid_pre)) {
            return None;
        }
        let mut numbers = core.split('.').map(parse_number);
        let version = Self {
            major: numbers.next()??,
            minor: numbers.next()??,
            patch: numbers.next()??,
            pre_release: pre.is_some(),
        };
        numbers.next().is_none().then_some(version)
    }

    /// `~> major.0.0`: at least `major.0.0` and below `major.1.0-0`.
    fn matches_patch_series(&self, major: u64) -> bool {
        self.major == major && self.minor == 0 && !(self.patch == 0 && self.pre_release)
    }
}

fn parse_number(part: &str) -> Option<u64> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || is_leading_zero_number(part)
    {
        return None;
    }
    part.parse().ok()
}

fn is_identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_leading_zero_number(id: &str) -> bool {
    id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_vsn_is_v1() {
        assert_eq!(Vsn::negotiate(None), Ok(Vsn::V1));
    }

    #[test]
    fn patch_series_select_serializers() {
        for v in ["1.0.0", "1.0.7", "1.0.1-rc.1", "1.0.0+build.5"] {
            assert_eq!(Vsn::negotiate(Some(v)), Ok(Vsn::V1), "{v}");
        }
        for v in ["2.0.0", "2.0.3", "2.0.10", "2.0.1-beta", "2.0.0+sha.abc"] {
            assert_eq!(Vsn::negotiate(Some(v)), Ok(Vsn::V2), "{v}");
        }
    }

    #[test]
    fn other_versions_are_unsupported() {
        for v in [
            "3.0.0",
            "2.1.0",
            "1.1.0",
            "0.9.0",
            "2.0.0-rc.1",
            "1.0.0-alpha",
        ] {
            assert_eq!(
                Vsn::negotiate(Some(v)),
                Err(VsnError::Unsupported(v.to_owned())),
                "{v}"
            );
        }
    }

    #[test]
    fn unparsable_versions_are_refused() {
        for v in [
            "", "2", "2.0", "2.0.0.0", "v2.0.0", "02.0.0", "2.0.x", " 2.0.0", "2.0.0-", "2.0.0+",
            "2.0.0-01",
        ] {
            assert_eq!(
                Vsn::negotiate(Some(v)),
                Err(VsnError::Unparsable(v.to_owned())),
                "{v:?}"
            );
        }
        let huge = "99999999999999999999999.0.0";
        assert!(matches!(
            Vsn::negotiate(Some(huge)),
            Err(VsnError::Unparsable(_))
        ));
    }

    #[test]
    fn only_v2_has_binary() {
        assert!(Vsn::V2.has_binary());
        assert!(!Vsn::V1.has_binary());
        assert_eq!(Vsn::V2.to_string(), "2.0.0");
    }
}
