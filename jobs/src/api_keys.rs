//! Creating an API key from a request, the same way from `herald keys create` and from
//! `POST /v1/keys`: which tenant, which role, which scopes, until when.

use chrono::{DateTime, Utc};

use crate::{
    store::{ApiKeyRole, CreatedKey, NewApiKey, Scope, Scopes, Store, StoreError},
    times,
};

const MAX_TENANT: usize = 100;
const MAX_LABEL: usize = 200;

/// A key to create, as asked for.
#[derive(Debug, Clone, Default)]
pub struct KeyRequest {
    /// The tenant's name (created if new), for a tenant key.
    pub tenant: Option<String>,
    /// An operator key instead.
    pub operator: bool,
    /// Scope names; absent: every scope the role may hold.
    pub scopes: Option<Vec<String>>,
    /// A span from now: `90s`, `15m`, `12h`, `30d`.
    pub expires_in: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub label: Option<String>,
}

/// Why a request cannot make a key, naming the field (`tenant`, `scopes[1]`, `expires_in`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        code,
        message: message.into(),
    }
}

/// A span such as `90s`, `15m`, `12h` or `30d`.
pub(crate) fn parse_span(spec: &str) -> Option<chrono::Duration> {
    let spec = spec.trim();
    let at = spec.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = spec.split_at(at);
    let n: i64 = n.parse().ok()?;
    match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
}

/// The role, tenant name, scopes, expiry and label of a request, checked.
fn check(
    req: &KeyRequest,
    now: DateTime<Utc>,
) -> Result<(ApiKeyRole, Option<String>, NewApiKey), Invalid> {
    let tenant = req.tenant.as_deref().map(str::trim);
    let (role, tenant) = match (tenant, req.operator) {
        (Some(_), true) => {
            return Err(invalid(
                "operator",
                "invalid_field",
                "a key is either a tenant's (`tenant`) or an operator's (`operator`), not both",
            ));
        }
        (None, false) => {
            return Err(invalid(
                "tenant",
                "missing_field",
                "name the tenant (`tenant`), or ask for an operator key (`operator`)",
            ));
        }
        (Some(name), false) => {
            if name.is_empty() || name.chars().count() > MAX_TENANT {
                return Err(invalid(
                    "tenant",
                    "invalid_field",
                    format!("the tenant name must be 1 to {MAX_TENANT} characters"),
                ));
            }
            (ApiKeyRole::Tenant, Some(name.to_owned()))
        }
        (None, true) => (ApiKeyRole::Operator, None),
    };
    let allowed = Scopes::allowed_for(role);
    let scopes = match &req.scopes {
        None => Scopes::default_for(role),
        Some(names) => {
            let mut list = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let field = format!("scopes[{i}]");
                let scope = Scope::parse(name.trim()).ok_or_else(|| {
                    invalid(
                        &field,
                        "unknown_scope",
                        format!("unknown scope `{name}` (read, share, connect, admin)"),
                    )
                })?;
                if !allowed.contains(scope) {
                    return Err(invalid(
                        &field,
                        "scope_not_allowed",
                        format!(
                            "a {} key cannot hold `{}` (it may hold: {})",
                            role.as_str(),
                            scope.as_str(),
                            allowed.names().join(", ")
                        ),
                    ));
                }
                list.push(scope);
            }
            if list.is_empty() {
                return Err(invalid(
                    "scopes",
                    "invalid_field",
                    "a key needs at least one scope",
                ));
            }
            Scopes::of(&list)
        }
    };
    let expires_at = match (&req.expires_in, req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "expires_at",
                "invalid_field",
                "give `expires_in` or `expires_at`, not both",
            ));
        }
        (Some(span), None) => {
            let d = parse_span(span)
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| {
                    invalid(
                        "expires_in",
                        "invalid_span",
                        "`expires_in` must be a positive span such as 90s, 15m, 12h or 30d",
                    )
                })?;
            let at = now
                .checked_add_signed(d)
                .filter(|t| times::in_range(*t))
                .ok_or_else(|| {
                    invalid(
                        "expires_in",
                        "time_out_of_range",
                        "`expires_in` reaches past 9999-01-01",
                    )
                })?;
            Some(at)
        }
        (None, Some(at)) => {
            if at <= now {
                return Err(invalid(
                    "expires_at",
                    "expires_at_in_past",
                    "`expires_at` must be in the future",
                ));
            }
            Some(at)
        }
        (None, None) => None,
    };
    // The limit is on what was sent (the document's maxLength), before trimming.
    if req
        .label
        .as_deref()
        .is_some_and(|l| l.chars().count() > MAX_LABEL)
    {
        return Err(invalid(
            "label",
            "field_too_long",
            format!("`label` is longer than {MAX_LABEL} characters"),
        ));
    }
    let label = req
        .label
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let label = label.or_else(|| (role == ApiKeyRole::Operator).then(|| "operator".to_owned()));
    Ok((
        role,
        tenant,
        NewApiKey {
            role,
            tenant_id: None,
            label,
            scopes,
            expires_at,
        },
    ))
}

/// Creates the key (and the tenant, if new). The key is in the answer, shown this once.
pub async fn create(
    store: &Store,
    req: &KeyRequest,
    now: DateTime<Utc>,
) -> Result<CreatedKey, CreateError> {
    let (_, tenant, mut new) = check(req, now)?;
    if let Some(name) = tenant {
        new.tenant_id = Some(store.ensure_tenant(&name, now).await?);
    }
    Ok(store.create_key(&new, now).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tenant: Option<&str>, operator: bool) -> KeyRequest {
        KeyRequest {
            tenant: tenant.map(str::to_owned),
            operator,
            ..Default::default()
        }
    }

    #[test]
    fn a_request_names_a_tenant_or_asks_for_an_operator_key() {
        let now = Utc::now();
        assert_eq!(check(&req(None, false), now).unwrap_err().field, "tenant");
        assert_eq!(
            check(&req(Some("a"), true), now).unwrap_err().field,
            "operator"
        );
        assert_eq!(
            check(&req(Some(" "), false), now).unwrap_err().field,
            "tenant"
        );
        let (role, tenant, new) = check(&req(Some(" acme "), false), now).unwrap();
        assert_eq!(
            (role, tenant.as_deref()),
            (ApiKeyRole::Tenant, Some("acme"))
        );
        assert_eq!(new.scopes, Scopes::default_for(ApiKeyRole::Tenant));
        let (role, _, new) = check(&req(None, true), now).unwrap();
        assert_eq!(role, ApiKeyRole::Operator);
        assert_eq!(new.label.as_deref(), Some("operator"));
    }

    #[test]
    fn scopes_must_be_known_and_fit_the_role() {
        let now = Utc::now();
        let mut r = req(Some("acme"), false);
        r.scopes = Some(vec!["read".into(), "admin".into()]);
        let e = check(&r, now).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code),
            ("scopes[1]", "scope_not_allowed")
        );
        r.scopes = Some(vec!["write".into()]);
        assert_eq!(check(&r, now).unwrap_err().code, "unknown_scope");
        r.scopes = Some(vec![]);
        assert_eq!(check(&r, now).unwrap_err().field, "scopes");
        r.scopes = Some(vec!["read".into()]);
        assert_eq!(check(&r, now).unwrap().2.scopes, Scopes::of(&[Scope::Read]));
    }

    #[test]
    fn an_expiry_is_a_positive_span_or_a_future_time() {
        let now = Utc::now();
        let mut r = req(Some("acme"), false);
        r.expires_in = Some("30d".into());
        assert_eq!(
            check(&r, now).unwrap().2.expires_at,
            Some(now + chrono::Duration::days(30))
        );
        for bad in ["0s", "-1h", "10", "2w", "99999999999999d"] {
            r.expires_in = Some(bad.into());
            assert!(check(&r, now).is_err(), "{bad}");
        }
        r.expires_in = None;
        r.expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(check(&r, now).unwrap_err().code, "expires_at_in_past");
    }
}
