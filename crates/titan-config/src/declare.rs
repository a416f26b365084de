//! The declaration macros: `section!` (a config struct and its schema entries from one list)
//! and `choice!` (an enumerated option type).

/// Declares one configuration section: the struct (with serde and `Default`) and its schema
/// entries, from one list of `/// doc` + `pub name: Type = default,` items, followed by an
/// optional `subsections { pub name: Type, }` block for nested tables.
macro_rules! section {
    (
        $(#[doc = $section_doc:literal])+
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident : $ty:ty = $default:expr,
            )*
        }
        $(
            subsections {
                $( pub $sub:ident : $sub_ty:ty, )+
            }
        )?
    ) => {
        $(#[doc = $section_doc])+
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
            $($(
                #[doc = concat!("The `", stringify!($sub), "` subsection.")]
                pub $sub: $sub_ty,
            )+)?
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $( $field: $default, )*
                    $($( $sub: <$sub_ty>::default(), )+)?
                }
            }
        }

        impl $crate::schema::Section for $name {
            fn describe(path: &str, out: &mut $crate::schema::SchemaBuilder) {
                out.section(path, &[$($section_doc),+]);
                $( out.option::<$ty>(path, stringify!($field), &[$($doc),+]); )*
                $($(
                    <$sub_ty as $crate::schema::Section>::describe(
                        &$crate::schema::join_key(path, stringify!($sub)),
                        out,
                    );
                )+)?
            }
        }
    };
}
pub(crate) use section;

/// Declares an enumerated option type: the enum, its TOML spellings, `Display` and schema info.
macro_rules! choice {
    (
        $(#[doc = $doc:literal])+
        pub enum $name:ident {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $text:literal $(| $alias:literal)*, )+
        }
    ) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $text $(, alias = $alias)*)] $variant, )+
        }

        impl $name {
            /// Every allowed spelling, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($text),+];

            /// The TOML spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $text, )+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::option_type::OptionType for $name {
            fn type_name() -> String {
                Self::VALUES
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
            fn choices() -> &'static [&'static str] {
                Self::VALUES
            }
            fn cli_value(text: &str) -> Option<$crate::option_type::CliValue> {
                Some($crate::option_type::CliValue::Set(toml::Value::String(
                    text.to_string(),
                )))
            }
        }
    };
}
pub(crate) use choice;
