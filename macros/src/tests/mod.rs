//! Expansion snapshots, in-process: each test expands `schema!` input and compares the
//! pretty-printed output with its committed snapshot (`cargo insta review` to update).

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand::expand_schema;

fn expand(input: TokenStream) -> String {
    let output = expand_schema(input);
    let file: syn::File = syn::parse2(output).expect("the expansion is a list of items");
    prettyplease::unparse(&file)
}

#[test]
fn transit_like_schema() {
    insta::assert_snapshot!(expand(quote! {
        /// A bus line.
        #[realm_object(table = "route")]
        pub struct Route {
            #[primary_key]
            pub id: String,
            pub name: String,
            pub schedules: List<Schedule>,
        }

        #[realm_object(table = "bus", class = "Bus")]
        pub struct Bus {
            #[primary_key]
            pub id: i64,
            #[indexed]
            #[postgres(type = "varchar(64)")]
            pub name: String,
            #[column = "routeid"]
            pub route: Option<pgrealm::Link<Route>>,
        }

        pub struct Schedule {
            #[primary_key]
            pub id: uuid::Uuid,
            #[postgres(custom_type = "weekday")]
            pub day: String,
            pub departure: chrono::DateTime<chrono::Utc>,
            pub stops: Vec<i16>,
        }
    }));
}

#[test]
fn errors_are_all_reported_and_the_structs_still_emitted() {
    insta::assert_snapshot!(expand(quote! {
        #[realm_object(tabel = "bus")]
        #[derive(Hash)]
        pub struct Bus {
            #[primary_key]
            #[primary_key]
            pub id: i64,
            #[column]
            pub name: String,
            pub seats: u64,
            #[postgres(type = "text", kind = "x")]
            pub note: Option<Option<String>>,
        }

        enum NotAStruct {}
    }));
}

#[test]
fn a_struct_named_schema_is_refused() {
    let out = expand(quote! {
        pub struct Schema {
            #[primary_key]
            pub id: i64,
        }
    });
    assert!(out.contains("schema! defines `Schema` itself"), "{out}");
}

#[test]
fn syntax_errors_are_reported_as_such() {
    let out = expand(quote! { pub struct Bus { id: } });
    assert!(out.contains("compile_error"), "{out}");
}
