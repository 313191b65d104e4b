use proc_macro::TokenStream;
#[proc_macro]
pub fn schema(t: TokenStream) -> TokenStream {
    t
}
