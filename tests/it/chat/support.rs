//! What several of these tests check the same way.

use tonic::Code;

pub fn assert_invalid(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    field: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?} naming {field}, got {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(field),
                "{field} not named in {status:?}"
            );
        }
    }
}
