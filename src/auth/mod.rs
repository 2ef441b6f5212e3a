//! Who may sync: the accounts from `SYNC_USERn`, login (`hostKey`) and the
//! host keys that authenticate every later request.
//!
//! Host keys are derived exactly as the official server derives them (the
//! SHA-1 of the whole `name:secret` value), so devices that logged in to the
//! official server keep working after a switch, and back.

pub mod password;

use std::fmt;

use sha1::{Digest, Sha1};

use crate::config::UserEntry;
use password::{Pbkdf2Hash, ct_eq, ct_eq_secret};

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// A `SYNC_USERn` value cannot be used (e.g. a malformed PHC string).
    BadAccount { var: String, reason: String },
    /// `hostKey` with an unknown user or a wrong password.
    BadCredentials,
    /// A request whose host key belongs to no account.
    UnknownHostKey,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadAccount { var, reason } => write!(f, "{var}: {reason}"),
            AuthError::BadCredentials => f.write_str("invalid user or password"),
            AuthError::UnknownHostKey => f.write_str("invalid hkey"),
        }
    }
}

impl std::error::Error for AuthError {}

enum Secret {
    Plain(String),
    Hashed(Pbkdf2Hash),
}

impl Secret {
    fn verify(&self, password: &str) -> bool {
        match self {
            Secret::Plain(p) => ct_eq_secret(p.as_bytes(), password.as_bytes()),
            Secret::Hashed(h) => h.verify(password.as_bytes()),
        }
    }
}

pub struct Account {
    pub name: String,
    pub hkey: String,
    secret: Secret,
}

/// The configured accounts. Immutable once built; shared by all workers.
pub struct Users {
    accounts: Vec<Account>,
    /// Checked when the user name is unknown, so that this costs as much
    /// as a wrong password.
    decoy: Secret,
}

impl Users {
    /// Builds the table, validating every PHC string up front so that a
    /// typo is a start-up error naming the variable, never a failed login.
    pub fn new(entries: &[UserEntry], passwords_hashed: bool) -> Result<Users, AuthError> {
        let mut accounts = Vec::with_capacity(entries.len());
        for entry in entries {
            let secret = if passwords_hashed {
                let hash = Pbkdf2Hash::parse(&entry.secret).map_err(|reason| AuthError::BadAccount {
                    var: entry.var.clone(),
                    reason: format!("PASSWORDS_HASHED is set, but the password is not a valid PHC string: {reason}"),
                })?;
                Secret::Hashed(hash)
            } else {
                Secret::Plain(entry.secret.clone())
            };
            accounts.push(Account {
                name: entry.name.clone(),
                hkey: host_key(&entry.name, &entry.secret),
                secret,
            });
        }
        let decoy = if passwords_hashed {
            Secret::Hashed(Pbkdf2Hash {
                prf: password::Prf::Sha256,
                rounds: password::DEFAULT_ROUNDS,
                salt: vec![0; 16],
                hash: vec![0; 32],
            })
        } else {
            Secret::Plain(String::new())
        };
        Ok(Users { accounts, decoy })
    }

    /// Checks a login. Unknown users and wrong passwords cost the same.
    pub fn login(&self, user: &str, password: &str) -> Result<&Account, AuthError> {
        match self.accounts.iter().find(|a| a.name == user) {
            Some(account) if account.secret.verify(password) => Ok(account),
            Some(_) => Err(AuthError::BadCredentials),
            None => {
                self.decoy.verify(password);
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// Finds the account a host key belongs to (compared in constant time).
    pub fn by_hkey(&self, hkey: &str) -> Result<&Account, AuthError> {
        let mut found = None;
        for account in &self.accounts {
            if ct_eq(account.hkey.as_bytes(), hkey.as_bytes()) && !hkey.is_empty() {
                found = Some(account);
            }
        }
        found.ok_or(AuthError::UnknownHostKey)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.accounts.iter().map(|a| a.name.as_str())
    }
}

/// Lowercase hex SHA-1 of `name:secret`, as the official server.
pub fn host_key(name: &str, secret: &str) -> String {
    let digest = Sha1::digest(format!("{name}:{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, name: &str, secret: &str) -> UserEntry {
        UserEntry {
            var: format!("SYNC_USER{n}"),
            name: name.into(),
            secret: secret.into(),
        }
    }

    #[test]
    fn host_key_matches_the_official_server() {
        assert_eq!(
            host_key("user", "pass"),
            "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d"
        );
    }

    #[test]
    fn plain_login_and_lookup() {
        let users = Users::new(&[entry(1, "user", "pass"), entry(2, "bob", "x:y")], false).unwrap();
        let a = users.login("user", "pass").unwrap();
        assert_eq!(a.hkey, "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
        assert_eq!(
            users.login("user", "wrong").err(),
            Some(AuthError::BadCredentials)
        );
        assert_eq!(
            users.login("nobody", "pass").err(),
            Some(AuthError::BadCredentials)
        );
        assert_eq!(
            users.login("USER", "pass").err(),
            Some(AuthError::BadCredentials)
        );
        assert_eq!(users.login("bob", "x:y").unwrap().name, "bob");
        assert_eq!(users.by_hkey(&host_key("bob", "x:y")).unwrap().name, "bob");
        assert_eq!(users.by_hkey("").err(), Some(AuthError::UnknownHostKey));
        assert_eq!(users.by_hkey("abc").err(), Some(AuthError::UnknownHostKey));
    }

    #[test]
    fn hashed_login_uses_the_phc_string_and_its_host_key() {
        let phc = "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q";
        let users = Users::new(&[entry(1, "user", phc)], true).unwrap();
        let a = users.login("user", "pass").unwrap();
        assert_eq!(a.hkey, host_key("user", phc));
        assert!(users.login("user", phc).is_err());
    }

    #[test]
    fn a_malformed_phc_string_names_its_variable() {
        let err = Users::new(
            &[entry(1, "a", "$pbkdf2-sha256$i=1$x"), entry(2, "b", "x")],
            true,
        )
        .err()
        .unwrap();
        match err {
            AuthError::BadAccount { var, reason } => {
                assert_eq!(var, "SYNC_USER1");
                assert!(reason.contains("PHC"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
