//! PostgreSQL statements written as SQL text that diesel prepares once per connection and reuses.
//!
//! `diesel::sql_query` marks its statement unsafe to cache, so PostgreSQL
//! parsed, analysed and planned the batch write afresh on every batch: a
//! third of the database's CPU per send. A [`Cached`] statement has a
//! text that never changes, so diesel's per-connection statement cache
//! keeps it as a named prepared statement and each batch only binds and
//! executes it.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Nullable, SmallInt, Text, Untyped};

/// One bind value of a [`Cached`] statement.
pub(super) enum Bind<'a> {
    Texts(&'a [&'a str]),
    NullableTexts(&'a [Option<&'a str>]),
    SmallInts(&'a [i16]),
    BigInts(&'a [i64]),
    BigInt(i64),
}

/// A statement of constant text whose `$n` placeholders stand for
/// `binds[n - 1]` (a placeholder may appear more than once). Every `$` in
/// the text is taken for a placeholder: the text must hold no other.
pub(super) struct Cached<'a> {
    sql: &'static str,
    binds: Vec<Bind<'a>>,
}

impl<'a> Cached<'a> {
    pub(super) fn new(sql: &'static str, binds: Vec<Bind<'a>>) -> Self {
        Cached { sql, binds }
    }
}

impl QueryId for Cached<'_> {
    type QueryId = ();
    // Not static: diesel keys the cache by the SQL text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Cached<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for Cached<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            let n: usize = rest[at + 1..at + 1 + digits].parse().map_err(|_| {
                diesel::result::Error::QueryBuilderError("a `$` without a bind number".into())
            })?;
            let bind = n
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(format!("no bind ${n}").into())
                })?;
            match bind {
                Bind::Texts(v) => out.push_bind_param::<Array<Text>, _>(*v)?,
                Bind::NullableTexts(v) => out.push_bind_param::<Array<Nullable<Text>>, _>(*v)?,
                Bind::SmallInts(v) => out.push_bind_param::<Array<SmallInt>, _>(*v)?,
                Bind::BigInts(v) => out.push_bind_param::<Array<BigInt>, _>(*v)?,
                Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v)?,
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_binds_in_order() {
        let texts = ["a"];
        let q = Cached::new(
            "SELECT $1::text[], $2 + $2",
            vec![Bind::Texts(&texts), Bind::BigInt(7)],
        );
        let sql = diesel::debug_query::<Pg, _>(&q).to_string();
        assert!(sql.starts_with("SELECT $1::text[], $2 + $3"), "{sql}");
        let bad = Cached::new("SELECT $3", vec![Bind::BigInt(1)]);
        let mut s = diesel::pg::PgQueryBuilder::default();
        assert!(bad.to_sql(&mut s, &Pg).is_err());
    }
}
