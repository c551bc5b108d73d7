//! The statements the dashboard builds for a table's row-level security:
//! `CREATE POLICY`, `DROP POLICY`, `ALTER TABLE … ROW LEVEL SECURITY` and
//! the select that "test as user" runs. Pure: every identifier is quoted
//! here; the policy's expressions are SQL the administrator wrote and are
//! placed as they are, between parentheses, in one statement that
//! PostgreSQL parses (and refuses) itself.

use serde_json::Value;

/// Why a policy or a name was refused before PostgreSQL saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct DdlError(pub String);

/// Longest identifier PostgreSQL keeps (longer ones are truncated, which
/// would silently name another object).
const MAX_IDENT: usize = 63;

/// `name` as a quoted SQL identifier; refused when empty, too long for
/// PostgreSQL or containing a NUL.
pub fn quote_ident(name: &str) -> Result<String, DdlError> {
    if name.is_empty() {
        return Err(DdlError("a name is required".to_owned()));
    }
    if name.len() > MAX_IDENT {
        return Err(DdlError(format!(
            "name {name:?} is longer than {MAX_IDENT} bytes"
        )));
    }
    if name.contains('\0') {
        return Err(DdlError("a name may not contain NUL".to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// `schema`.`table`, both quoted.
pub fn qualified(schema: &str, table: &str) -> Result<String, DdlError> {
    Ok(format!("{}.{}", quote_ident(schema)?, quote_ident(table)?))
}

/// The command a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    All,
    Select,
    Insert,
    Update,
    Delete,
}

impl Command {
    fn parse(text: &str) -> Option<Command> {
        match text.to_ascii_uppercase().as_str() {
            "ALL" | "*" => Some(Command::All),
            "SELECT" => Some(Command::Select),
            "INSERT" => Some(Command::Insert),
            "UPDATE" => Some(Command::Update),
            "DELETE" => Some(Command::Delete),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Command::All => "ALL",
            Command::Select => "SELECT",
            Command::Insert => "INSERT",
            Command::Update => "UPDATE",
            Command::Delete => "DELETE",
        }
    }
}

/// A policy as the dashboard sends it: `{"name", "command", "permissive",
/// "roles", "using", "check"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub command: Command,
    pub permissive: bool,
    /// Role names; empty (or `public`) means every role.
    pub roles: Vec<String>,
    pub using: Option<String>,
    pub check: Option<String>,
}

/// Longest policy expression accepted.
const MAX_EXPRESSION: usize = 16 * 1024;

fn expression(value: &Value, field: &str) -> Result<Option<String>, DdlError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) if text.len() > MAX_EXPRESSION => Err(DdlError(format!(
            "{field} is longer than {MAX_EXPRESSION} bytes"
        ))),
        Value::String(text) if text.contains('\0') => {
            Err(DdlError(format!("{field} may not contain NUL")))
        }
        Value::String(text) => Ok(Some(text.trim().to_owned())),
        _ => Err(DdlError(format!("{field} must be a string of SQL"))),
    }
}

impl Policy {
    /// Reads a policy from the dashboard's JSON.
    pub fn from_json(value: &Value) -> Result<Policy, DdlError> {
        let name = value["name"]
            .as_str()
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        quote_ident(&name)?;
        let command = match &value["command"] {
            Value::Null => Command::All,
            Value::String(text) => Command::parse(text).ok_or_else(|| {
                DdlError(format!(
                    "command must be ALL, SELECT, INSERT, UPDATE or DELETE, not {text:?}"
                ))
            })?,
            _ => return Err(DdlError("command must be a string".to_owned())),
        };
        let permissive = match &value["permissive"] {
            Value::Null => true,
            Value::Bool(b) => *b,
            Value::String(text) if text.eq_ignore_ascii_case("permissive") => true,
            Value::String(text) if text.eq_ignore_ascii_case("restrictive") => false,
            _ => {
                return Err(DdlError(
                    "permissive must be true or false (or \"PERMISSIVE\"/\"RESTRICTIVE\")"
                        .to_owned(),
                ));
            }
        };
        let roles = match &value["roles"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| DdlError("roles must be names".to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(DdlError("roles must be a list of names".to_owned())),
        };
        for role in &roles {
            quote_ident(role)?;
        }
        Ok(Policy {
            name,
            command,
            permissive,
            roles,
            using: expression(&value["using"], "using")?,
            check: expression(&value["check"], "check")?,
        })
    }

    /// `CREATE POLICY` on `schema`.`table`.
    pub fn create_sql(&self, schema: &str, table: &str) -> Result<String, DdlError> {
        let roles = if self.roles.is_empty()
            || self.roles.iter().any(|r| r.eq_ignore_ascii_case("public"))
        {
            "PUBLIC".to_owned()
        } else {
            self.roles
                .iter()
                .map(|r| quote_ident(r))
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        };
        let mut sql = format!(
            "CREATE POLICY {} ON {} AS {} FOR {} TO {roles}",
            quote_ident(&self.name)?,
            qualified(schema, table)?,
            if self.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            self.command.sql(),
        );
        // Line breaks around the expressions: a `--` comment in one ends
        // with its line instead of swallowing the closing parenthesis.
        if let Some(using) = &self.using {
            sql.push_str(&format!(" USING (\n{using}\n)"));
        }
        if let Some(check) = &self.check {
            sql.push_str(&format!(" WITH CHECK (\n{check}\n)"));
        }
        Ok(sql)
    }
}

/// `DROP POLICY` `name` on `schema`.`table`.
pub fn drop_sql(schema: &str, table: &str, name: &str) -> Result<String, DdlError> {
    Ok(format!(
        "DROP POLICY {} ON {}",
        quote_ident(name)?,
        qualified(schema, table)?
    ))
}

/// Turns row-level security on `schema`.`table` on or off.
pub fn rls_sql(schema: &str, table: &str, enabled: bool) -> Result<String, DdlError> {
    Ok(format!(
        "ALTER TABLE {} {} ROW LEVEL SECURITY",
        qualified(schema, table)?,
        if enabled { "ENABLE" } else { "DISABLE" }
    ))
}

/// What "test as user" runs inside the user's request transaction: who
/// the database thinks the caller is, how many rows of `schema`.`table`
/// it sees, and the first `$1` of them as JSON.
pub fn as_user_sql(schema: &str, table: &str) -> Result<String, DdlError> {
    let relation = qualified(schema, table)?;
    Ok(format!(
        "select json_build_object(
           'current_user', current_user,
           'role', auth.role(),
           'uid', auth.uid(),
           'count', (select count(*) from {relation}),
           'rows', (select coalesce(json_agg(r), '[]'::json)
                      from (select * from {relation} limit $1) r))"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers_are_quoted_and_bad_ones_refused() {
        assert_eq!(quote_ident("todos").unwrap(), "\"todos\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; drop table t; --").unwrap(),
            "\"x\"\"; drop table t; --\""
        );
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        assert_eq!(
            qualified("public", "my table").unwrap(),
            "\"public\".\"my table\""
        );
    }

    #[test]
    fn a_policy_becomes_one_create_policy_statement() {
        let policy = Policy::from_json(&json!({
            "name": "owners read", "command": "select", "permissive": true,
            "roles": ["authenticated", "we\"ird"], "using": "user_id = auth.uid()", "check": ""
        }))
        .unwrap();
        assert_eq!(
            policy.create_sql("public", "todos").unwrap(),
            "CREATE POLICY \"owners read\" ON \"public\".\"todos\" AS PERMISSIVE FOR SELECT \
             TO \"authenticated\", \"we\"\"ird\" USING (\nuser_id = auth.uid()\n)"
        );
        let restrictive = Policy::from_json(&json!({
            "name": "p", "command": "INSERT", "permissive": "RESTRICTIVE", "check": "true -- ok"
        }))
        .unwrap();
        assert_eq!(
            restrictive.create_sql("s", "t").unwrap(),
            "CREATE POLICY \"p\" ON \"s\".\"t\" AS RESTRICTIVE FOR INSERT TO PUBLIC WITH CHECK (\ntrue -- ok\n)"
        );
        let public =
            Policy::from_json(&json!({"name": "p", "roles": ["public"], "using": "true"})).unwrap();
        assert_eq!(public.command, Command::All);
        assert!(
            public
                .create_sql("s", "t")
                .unwrap()
                .contains(" TO PUBLIC USING")
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            json!({"name": ""}),
            json!({"command": "select"}),
            json!({"name": "p", "command": "truncate"}),
            json!({"name": "p", "command": 3}),
            json!({"name": "p", "permissive": "maybe"}),
            json!({"name": "p", "roles": "authenticated"}),
            json!({"name": "p", "roles": [""]}),
            json!({"name": "p", "roles": [1]}),
            json!({"name": "p", "using": 1}),
            json!({"name": "p", "using": "a\u{0}b"}),
            json!({"name": "p", "check": "x".repeat(MAX_EXPRESSION + 1)}),
            json!({"name": "x".repeat(64)}),
        ] {
            assert!(Policy::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn drop_rls_and_test_statements_quote_their_names() {
        assert_eq!(
            drop_sql("public", "todos", "owners read").unwrap(),
            "DROP POLICY \"owners read\" ON \"public\".\"todos\""
        );
        assert_eq!(
            rls_sql("public", "to\"dos", true).unwrap(),
            "ALTER TABLE \"public\".\"to\"\"dos\" ENABLE ROW LEVEL SECURITY"
        );
        assert!(
            rls_sql("public", "todos", false)
                .unwrap()
                .contains("DISABLE")
        );
        let select = as_user_sql("public", "todos").unwrap();
        assert!(select.contains("from \"public\".\"todos\" limit $1"));
        assert!(drop_sql("", "t", "p").is_err());
        assert!(as_user_sql("s", "").is_err());
    }
}
