//! Members as other nodes announce them: the wire form, the token rules every member must obey, and the bounds per room.
//!
//! A node announces its members of a room in a snapshot (on the room's
//! `.p` subject, or as the answer to a sync request). A receiver believes a
//! snapshot only whole: every member must be one a token could have made
//! (the user id obeys the rule for `sub`, the display name is what the rule
//! for `name` makes of it), and the room must stay within the bounds below,
//! else the snapshot is dropped and counted as invalid. The bounds keep a
//! room's remote members, and so its `joined`, small whatever a node says.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::{display_name, user_id_problem};

/// The most members one node may announce in one room.
pub const MAX_MEMBERS_PER_NODE: usize = 10_000;
/// The most other nodes whose members a room counts.
pub const MAX_NODES_PER_ROOM: usize = 64;
/// The most members a room counts on other nodes, all nodes together.
pub const MAX_REMOTE_MEMBERS: usize = 100_000;
/// The most bytes of user ids and display names a room counts on other
/// nodes, all nodes together: keeps a `joined` far below gRPC's default
/// 4 MiB message limit.
pub const MAX_REMOTE_BYTES: usize = 2 * 1024 * 1024;

/// Members by user id, with their display name.
pub(crate) type MemberMap = BTreeMap<Arc<str>, Arc<str>>;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireMember {
    #[prost(string, tag = "1")]
    pub(crate) user_id: String,
    #[prost(string, tag = "2")]
    pub(crate) display_name: String,
}

/// A node's members of one room; the node is the sealed message's sender.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Snapshot {
    /// The room, for answers to a sync request (a `.p` subject names it
    /// already).
    #[prost(string, tag = "1")]
    pub(crate) room: String,
    /// Grows with every snapshot the node sends: an older one is stale.
    #[prost(uint64, tag = "2")]
    pub(crate) seq: u64,
    #[prost(message, repeated, tag = "3")]
    pub(crate) members: Vec<WireMember>,
}

/// A snapshot's members that obey the rules, with their size in bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) members: MemberMap,
    /// The sum of the user ids' and display names' lengths.
    pub(crate) bytes: usize,
}

/// The members of a snapshot, or why it breaks a rule.
pub(crate) fn check(members: Vec<WireMember>) -> Result<Checked, String> {
    if members.len() > MAX_MEMBERS_PER_NODE {
        return Err(format!(
            "{} members, over the {MAX_MEMBERS_PER_NODE} one node may announce in a room",
            members.len()
        ));
    }
    let mut checked = Checked::default();
    for member in members {
        if let Some(problem) = user_id_problem(&member.user_id) {
            return Err(format!("a member's user id {problem}"));
        }
        match display_name(&member.user_id, Some(&member.display_name)) {
            Ok(name) if name == member.display_name => {}
            Ok(_) => return Err("a member's display name is not one a token makes".into()),
            Err(problem) => return Err(format!("a member's display name {problem}")),
        }
        checked.bytes += member.user_id.len() + member.display_name.len();
        checked
            .members
            .insert(member.user_id.into(), member.display_name.into());
    }
    Ok(checked)
}

/// This node's members of a room as a snapshot: at most
/// [`MAX_MEMBERS_PER_NODE`] of them (in user id order), as receivers take
/// no more.
pub(crate) fn snapshot(room: &str, seq: u64, local: Vec<(Arc<str>, Arc<str>)>) -> Snapshot {
    Snapshot {
        room: room.to_owned(),
        seq,
        members: local
            .into_iter()
            .take(MAX_MEMBERS_PER_NODE)
            .map(|(id, name)| WireMember {
                user_id: id.to_string(),
                display_name: name.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, name: &str) -> WireMember {
        WireMember {
            user_id: id.into(),
            display_name: name.into(),
        }
    }

    #[test]
    fn members_must_be_what_a_token_makes() {
        let ok = check(vec![member("alice", "Alice"), member("bob", "bob")]).unwrap();
        assert_eq!(ok.members.len(), 2);
        assert_eq!(ok.bytes, 5 + 5 + 3 + 3);
        for bad in [
            member("ev\u{202e}il", "x"),
            member("", "x"),
            member(&"a".repeat(5000), "x"),
            member("carol", "line\nbreak"),
            member("carol", "Ca\u{200b}rol"),
            member("carol", ""),
            member("carol", &"n".repeat(65)),
        ] {
            assert!(
                check(vec![member("alice", "Alice"), bad.clone()]).is_err(),
                "{bad:?}"
            );
        }
        let many = (0..=MAX_MEMBERS_PER_NODE)
            .map(|i| member(&format!("u{i}"), "n"))
            .collect();
        assert!(check(many).is_err());
    }
}
