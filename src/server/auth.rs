//! The admin guard: `Authorization: Bearer <STAMPEDE_ADMIN_TOKEN>`, compared
//! in constant time so the comparison leaks nothing of the token's prefix.

use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use subtle::ConstantTimeEq;

use super::RequestError;
use crate::config::Secret;

/// The configured admin token; `None` disables every admin route (403).
#[derive(Clone)]
pub struct AdminGuard {
    token: Option<String>,
}

impl std::fmt::Debug for AdminGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() {
            "AdminGuard(configured)"
        } else {
            "AdminGuard(disabled)"
        })
    }
}

impl AdminGuard {
    pub fn new(token: Option<&Secret>) -> Self {
        Self {
            token: token.map(|t| t.expose().to_owned()),
        }
    }

    /// `Ok` when the request carries the admin token.
    pub fn check(&self, parts: &Parts) -> Result<(), RequestError> {
        let Some(token) = &self.token else {
            return Err(RequestError::AdminDisabled);
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(RequestError::Unauthorized)?;
        // ct_eq of slices of unequal length returns false at once; the length
        // of the token is not the secret.
        if bool::from(presented.trim().as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(RequestError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>) -> Parts {
        let mut req = hyper::Request::builder();
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_the_exact_token_passes() {
        let guard = AdminGuard {
            token: Some("s3cret".into()),
        };
        assert!(guard.check(&parts(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            assert!(
                matches!(guard.check(&parts(bad)), Err(RequestError::Unauthorized)),
                "{bad:?}"
            );
        }
        let disabled = AdminGuard::new(None);
        assert!(matches!(
            disabled.check(&parts(Some("Bearer s3cret"))),
            Err(RequestError::AdminDisabled)
        ));
    }
}
