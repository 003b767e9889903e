//! `#[operator]`: makes an operator's struct deserializable from its pipeline config, through
//! the serde that `weir-guest` re-exports, so a plugin depends on `weir-guest` alone.

use proc_macro::TokenStream;

/// Marks a struct as an operator whose fields are its configuration.
#[proc_macro_attribute]
pub fn operator(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return r##"compile_error!("#[operator] takes no arguments");"##
            .parse()
            .expect("valid tokens");
    }
    let mut out: TokenStream = "#[derive(::weir_guest::serde::Deserialize)] \
                                #[serde(crate = \"::weir_guest::serde\", deny_unknown_fields)]"
        .parse()
        .expect("valid tokens");
    out.extend(item);
    out
}

/// Marks a struct as an aggregator's accumulator: serializable (weir stores it with the window)
/// and `Default` (a new window starts from it), through the serde that `weir-guest` re-exports.
#[proc_macro_attribute]
pub fn accumulator(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return r##"compile_error!("#[accumulator] takes no arguments");"##
            .parse()
            .expect("valid tokens");
    }
    let mut out: TokenStream = "#[derive(::weir_guest::serde::Serialize, \
                                ::weir_guest::serde::Deserialize, ::core::default::Default)] \
                                #[serde(crate = \"::weir_guest::serde\")]"
        .parse()
        .expect("valid tokens");
    out.extend(item);
    out
}
