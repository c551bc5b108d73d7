//! The `Prefer` and `Range` request headers (spec §2.8, §2.11.5).

/// `return=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    HeadersOnly,
    Representation,
}

/// `count=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountPreference {
    Exact,
    Planned,
    Estimated,
}

/// `resolution=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    MergeDuplicates,
    IgnoreDuplicates,
}

/// `missing=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Default,
    Null,
}

/// `tx=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPreference {
    Commit,
    Rollback,
}

/// `handling=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    Lenient,
    Strict,
}

/// Every preference a request states. The first occurrence of each kind
/// wins; what is not understood is kept in `invalid` (refused only with
/// `handling=strict`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    pub return_: Option<ReturnPreference>,
    pub count: Option<CountPreference>,
    pub resolution: Option<Resolution>,
    pub missing: Option<Missing>,
    pub tx: Option<TxPreference>,
    pub handling: Option<Handling>,
    pub timezone: Option<String>,
    pub max_affected: Option<i64>,
    pub invalid: Vec<String>,
}

fn set<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// Parses every `Prefer` header value (each may hold several preferences
/// separated by commas).
pub fn parse_prefer<'a>(values: impl IntoIterator<Item = &'a str>) -> Preferences {
    let mut prefs = Preferences::default();
    for value in values {
        for item in value.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, arg) = item.split_once('=').unwrap_or((item, ""));
            let (name, arg) = (name.trim(), arg.trim());
            let understood = match (name, arg) {
                ("return", "minimal") => {
                    set(&mut prefs.return_, ReturnPreference::Minimal);
                    true
                }
                ("return", "headers-only") => {
                    set(&mut prefs.return_, ReturnPreference::HeadersOnly);
                    true
                }
                ("return", "representation") => {
                    set(&mut prefs.return_, ReturnPreference::Representation);
                    true
                }
                ("count", "exact") => {
                    set(&mut prefs.count, CountPreference::Exact);
                    true
                }
                ("count", "planned") => {
                    set(&mut prefs.count, CountPreference::Planned);
                    true
                }
                ("count", "estimated") => {
                    set(&mut prefs.count, CountPreference::Estimated);
                    true
                }
                ("resolution", "merge-duplicates") => {
                    set(&mut prefs.resolution, Resolution::MergeDuplicates);
                    true
                }
                ("resolution", "ignore-duplicates") => {
                    set(&mut prefs.resolution, Resolution::IgnoreDuplicates);
                    true
                }
                ("missing", "default") => {
                    set(&mut prefs.missing, Missing::Default);
                    true
                }
                ("missing", "null") => {
                    set(&mut prefs.missing, Missing::Null);
                    true
                }
                ("tx", "commit") => {
                    set(&mut prefs.tx, TxPreference::Commit);
                    true
                }
                ("tx", "rollback") => {
                    set(&mut prefs.tx, TxPreference::Rollback);
                    true
                }
                ("handling", "lenient") => {
                    set(&mut prefs.handling, Handling::Lenient);
                    true
                }
                ("handling", "strict") => {
                    set(&mut prefs.handling, Handling::Strict);
                    true
                }
                ("timezone", tz) if !tz.is_empty() => {
                    set(&mut prefs.timezone, tz.to_owned());
                    true
                }
                ("max-affected", n) => match n.parse::<i64>() {
                    Ok(n) if n >= 0 => {
                        set(&mut prefs.max_affected, n);
                        true
                    }
                    _ => false,
                },
                // Legacy; accepted and ignored.
                ("params", "single-object") => true,
                _ => false,
            };
            if !understood {
                prefs.invalid.push(item.to_owned());
            }
        }
    }
    prefs
}

/// A `Range: <from>-[<to>]` request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeHeader {
    pub from: i64,
    pub to: Option<i64>,
}

/// Parses a `Range` header value (`0-9`, `10-`, optionally `items=0-9`).
/// `Err` carries the PGRST103 details when the bounds are reversed; `Ok(None)`
/// means the header is not a range Sovra understands and is ignored, as
/// PostgREST does.
pub fn parse_range(value: &str) -> Result<Option<RangeHeader>, String> {
    let value = value.trim();
    let value = value.strip_prefix("items=").unwrap_or(value);
    let Some((from, to)) = value.split_once('-') else {
        return Ok(None);
    };
    let Ok(from) = from.trim().parse::<i64>() else {
        return Ok(None);
    };
    let to = match to.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(to) => Some(to),
            Err(_) => return Ok(None),
        },
    };
    if from < 0 {
        return Ok(None);
    }
    if let Some(to) = to
        && to < from
    {
        return Err(
                "The lower boundary must be lower than or equal to the upper boundary in the Range header."
                    .to_owned(),
            );
    }
    Ok(Some(RangeHeader { from, to }))
}
