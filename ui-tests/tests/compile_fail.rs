//! `schema!`'s compile errors: every mistake of issue 2 has a case in `tests/ui/fail` whose
//! `.stderr` shows the message and where it points; `tests/ui/pass` holds schemas that must
//! compile and run. Refresh the `.stderr` files after a deliberate change with
//! `TRYBUILD=overwrite cargo test -p pgrealm-ui-tests --test compile_fail` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
