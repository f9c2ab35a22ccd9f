//! ListReadMarkers: every user's read marker in a room, highest seq first,
//! a page at a time behind an opaque token.

use crate::error::Result;

use super::{RoomName, USER_ID_MAX_BYTES, bad_page_token, from_hex, parse_seq, to_hex};

/// Markers per page when the client asks for none.
pub const MARKERS_PAGE_DEFAULT: u32 = 50;
/// The most markers per page.
pub const MARKERS_PAGE_MAX: u32 = 200;

/// Where a page starts: after this marker, in the listing's order (seq
/// descending, then user id ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkersCursor {
    pub seq: u64,
    pub user_id: String,
}

impl MarkersCursor {
    const PREFIX: &'static str = "m1:";

    /// The opaque token: hex of `m1:<seq>:<user id>`.
    pub fn token(&self) -> String {
        to_hex(&format!("{}{}:{}", Self::PREFIX, self.seq, self.user_id))
    }

    /// Reads a token made by [`Self::token`]; anything else is
    /// INVALID_ARGUMENT naming page_token.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = bad_page_token;
        let plain = from_hex(token).ok_or_else(bad)?;
        let rest = plain.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let (seq, user_id) = rest.split_once(':').ok_or_else(bad)?;
        let seq = parse_seq("page_token", seq.parse::<u64>().map_err(|_| bad())?)?;
        if user_id.is_empty() || user_id.len() > USER_ID_MAX_BYTES {
            return Err(bad());
        }
        Ok(MarkersCursor {
            seq,
            user_id: user_id.to_owned(),
        })
    }
}

/// A validated ListReadMarkers request.
#[derive(Clone, Debug)]
pub struct MarkersQuery {
    pub room: RoomName,
    /// 1 to [`MARKERS_PAGE_MAX`].
    pub limit: u32,
    pub after: Option<MarkersCursor>,
}

impl MarkersQuery {
    pub fn parse(room: &str, page_size: u32, page_token: &str) -> Result<Self> {
        let room = RoomName::parse(room)?;
        let limit = match page_size {
            0 => MARKERS_PAGE_DEFAULT,
            n => n.min(MARKERS_PAGE_MAX),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(MarkersCursor::parse(page_token)?)
        };
        Ok(MarkersQuery { room, limit, after })
    }
}

/// One user's marker in a room, with the name they last moved it under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMarkerRow {
    pub user_id: String,
    pub display_name: String,
    pub seq: u64,
}
