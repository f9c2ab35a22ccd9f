//! Display names: the one rule for a token's `name` claim and for the members other nodes announce.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The longest display name, in characters (after format characters are
/// removed).
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;

/// Unicode format characters (general category Cf): bidi overrides and
/// isolates, zero-width spaces and joiners, soft hyphens, tags...
fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// The display name shown for `user_id` given `raw` (a token's `name`):
/// format characters removed (they would make it render differently from
/// what it holds), trimmed, the user id when nothing is left; at most
/// [`DISPLAY_NAME_MAX_CHARS`] characters without control characters, else
/// why not.
pub fn display_name(user_id: &str, raw: Option<&str>) -> Result<String, String> {
    let name: Option<String> = raw.map(|n| n.chars().filter(|&c| !is_format(c)).collect());
    match name.as_deref().map(str::trim) {
        None | Some("") => Ok(user_id.to_owned()),
        Some(name) => {
            if name.chars().count() > DISPLAY_NAME_MAX_CHARS || name.chars().any(char::is_control) {
                return Err(format!(
                    "must be at most {DISPLAY_NAME_MAX_CHARS} characters without control characters"
                ));
            }
            Ok(name.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(display_name("bob", None).unwrap(), "bob");
        assert_eq!(display_name("bob", Some(" \u{200b} ")).unwrap(), "bob");
        assert_eq!(display_name("bob", Some("Bo\u{202e}b")).unwrap(), "Bob");
        assert!(display_name("bob", Some("a\nb")).is_err());
        assert!(display_name("bob", Some(&"x".repeat(65))).is_err());
        assert_eq!(
            display_name("bob", Some(&"é".repeat(64)))
                .unwrap()
                .chars()
                .count(),
            64
        );
    }
}
