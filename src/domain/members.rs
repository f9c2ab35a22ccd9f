//! ListMembers pages: the page size and the opaque token of where the next
//! page starts (the last user id listed), parsed once.

use super::{bad_page_token, from_hex, to_hex, user_id_problem};
use crate::error::Result;

/// Members per ListMembers page when the client asks for none.
pub const MEMBERS_PAGE_DEFAULT: u32 = 100;
/// The most members per ListMembers page.
pub const MEMBERS_PAGE_MAX: u32 = 1000;

/// Where a ListMembers page starts: after this user id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersCursor {
    pub after: String,
}

impl MembersCursor {
    const PREFIX: &'static str = "m1:";

    /// The opaque token: hex of `m1:<user id>`.
    pub fn token(&self) -> String {
        to_hex(&format!("{}{}", Self::PREFIX, self.after))
    }

    /// Reads a token made by [`Self::token`]; anything else is
    /// INVALID_ARGUMENT naming page_token.
    pub fn parse(token: &str) -> Result<Self> {
        let plain = from_hex(token).ok_or_else(bad_page_token)?;
        let after = plain
            .strip_prefix(Self::PREFIX)
            .ok_or_else(bad_page_token)?;
        if user_id_problem(after).is_some() {
            return Err(bad_page_token());
        }
        Ok(MembersCursor {
            after: after.to_owned(),
        })
    }
}

/// A validated ListMembers request's paging.
#[derive(Clone, Debug)]
pub struct MembersQuery {
    /// 1 to [`MEMBERS_PAGE_MAX`].
    pub limit: usize,
    pub after: Option<MembersCursor>,
}

impl MembersQuery {
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self> {
        let limit = match page_size {
            0 => MEMBERS_PAGE_DEFAULT,
            n => n.min(MEMBERS_PAGE_MAX),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(MembersCursor::parse(page_token)?)
        };
        Ok(MembersQuery {
            limit: limit as usize,
            after,
        })
    }

    /// The user id the page starts after, if any.
    pub fn after(&self) -> Option<&str> {
        self.after.as_ref().map(|c| c.after.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(MembersQuery::parse(0, "").map(|q| q.limit).ok(), Some(100));
        assert_eq!(MembersQuery::parse(7, "").map(|q| q.limit).ok(), Some(7));
        assert_eq!(
            MembersQuery::parse(5000, "").map(|q| q.limit).ok(),
            Some(1000)
        );
    }

    #[test]
    fn tokens_round_trip_and_anything_else_is_refused() {
        let cursor = MembersCursor {
            after: "alice:ü".into(),
        };
        let parsed = MembersQuery::parse(0, &cursor.token()).expect("our token");
        assert_eq!(parsed.after(), Some("alice:ü"));
        for bad in ["zz", "6d313a", "616263", "6d31", &"6d".repeat(300)] {
            let err = MembersQuery::parse(0, bad).expect_err(bad);
            assert!(err.to_string().contains("page_token"), "{bad}: {err}");
        }
    }
}
