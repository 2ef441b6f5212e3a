//! Who may sync: the accounts from `SYNC_USERn` and the users file, login
//! (`hostKey`) and the host keys that authenticate every later request.
//!
//! Host keys are derived exactly as the official server derives them (the
//! SHA-1 of the whole `name:secret` value), so devices that logged in to the
//! official server keep working after a switch, and back.

pub mod live;
pub mod manage;
pub mod password;
pub mod throttle;
pub mod users_file;

use std::fmt;

use sha1::{Digest, Sha1};

use crate::config::UserEntry;
use password::{Pbkdf2Hash, ct_eq, ct_eq_secret};
pub use users_file::UsersFile;

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// A `SYNC_USERn` value cannot be used (e.g. a malformed PHC string).
    BadAccount { var: String, reason: String },
    /// `hostKey` with an unknown user or a wrong password.
    BadCredentials,
    /// A request whose host key belongs to no account.
    UnknownHostKey,
    /// `hostKey` from an address that failed too many logins, refused
    /// without checking the password; it may try again after this long.
    Throttled { retry_after: std::time::Duration },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadAccount { var, reason } => write!(f, "{var}: {reason}"),
            AuthError::BadCredentials => f.write_str("invalid user or password"),
            AuthError::UnknownHostKey => f.write_str("invalid hkey"),
            AuthError::Throttled { retry_after } => write!(
                f,
                "too many failed logins from this address; refused for {} s",
                retry_after.as_secs().max(1)
            ),
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

/// The configured accounts. Immutable once built; shared by all workers
/// (a changed users file makes a new table, see [`live`]).
pub struct Users {
    accounts: Vec<Account>,
    /// Checked when the user name is unknown, so that this costs as much
    /// as a wrong password.
    decoy: Secret,
    /// Plain passwords also pay for a decoy check when other accounts are
    /// hashed, so login time does not tell which kind an account is.
    pad_plain: bool,
}

impl Users {
    /// Builds the table, validating every PHC string up front so that a
    /// typo is a start-up error naming the variable, never a failed login.
    pub fn new(entries: &[UserEntry], passwords_hashed: bool) -> Result<Users, AuthError> {
        Users::build(entries, passwords_hashed, &UsersFile::default())
    }

    /// The `SYNC_USERn` accounts plus the users file's (whose secrets are
    /// always PHC strings). A name may be defined in only one place.
    pub fn build(
        entries: &[UserEntry],
        passwords_hashed: bool,
        file: &UsersFile,
    ) -> Result<Users, AuthError> {
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
        for (name, phc) in file.users() {
            if let Some(entry) = entries.iter().find(|e| e.name == name) {
                return Err(AuthError::BadAccount {
                    var: users_file::FILE_NAME.into(),
                    reason: format!(
                        "user {name:?} is also defined by {}; remove one of them",
                        entry.var
                    ),
                });
            }
            let hash = Pbkdf2Hash::parse(phc).map_err(|reason| AuthError::BadAccount {
                var: users_file::FILE_NAME.into(),
                reason: format!("user {name:?}: {reason}"),
            })?;
            accounts.push(Account {
                name: name.to_string(),
                hkey: host_key(name, phc),
                secret: Secret::Hashed(hash),
            });
        }
        let any_hashed = accounts
            .iter()
            .any(|a| matches!(a.secret, Secret::Hashed(_)));
        let decoy = if passwords_hashed || any_hashed {
            Secret::Hashed(Pbkdf2Hash {
                prf: password::Prf::Sha256,
                rounds: password::DEFAULT_ROUNDS,
                salt: vec![0; 16],
                hash: vec![0; 32],
            })
        } else {
            Secret::Plain(String::new())
        };
        let pad_plain = any_hashed && !passwords_hashed && !entries.is_empty();
        Ok(Users {
            accounts,
            decoy,
            pad_plain,
        })
    }

    /// Checks a login. Unknown users and wrong passwords cost the same.
    pub fn login(&self, user: &str, password: &str) -> Result<&Account, AuthError> {
        match self.accounts.iter().find(|a| a.name == user) {
            Some(account) => {
                let ok = account.secret.verify(password);
                if self.pad_plain && matches!(account.secret, Secret::Plain(_)) {
                    self.decoy.verify(password);
                }
                if ok {
                    Ok(account)
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
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

    pub fn contains(&self, name: &str) -> bool {
        self.accounts.iter().any(|a| a.name == name)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
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
    fn file_users_are_hashed_and_keyed_by_their_line() {
        let phc = "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q";
        let file = UsersFile::parse(&format!("carol:{phc}\n")).unwrap();
        // Plain env users and hashed file users side by side.
        let users = Users::build(&[entry(1, "user", "pass")], false, &file).unwrap();
        assert_eq!(
            users.login("carol", "pass").unwrap().hkey,
            host_key("carol", phc)
        );
        assert!(users.login("carol", phc).is_err());
        // (Logging in as `user` would now also pay for a 600 000-round decoy.)
        assert!(users.pad_plain);
        assert_eq!(
            users.by_hkey(&host_key("user", "pass")).unwrap().name,
            "user"
        );
        assert_eq!(
            users.by_hkey(&host_key("carol", phc)).unwrap().name,
            "carol"
        );
        assert_eq!(users.len(), 2);
        // A name in both places is refused, naming both.
        let err = Users::build(&[entry(2, "carol", "x")], false, &file)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("users.txt") && err.contains("SYNC_USER2"),
            "{err}"
        );
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
