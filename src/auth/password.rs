//! Password checking: PHC-format PBKDF2 strings (the official server's
//! `PASSWORDS_HASHED` format) and constant-time comparison of secrets.

use sha2::{Digest, Sha256, Sha512};

/// The fixed salt the official server uses when it hashes a plain password
/// itself (PHC base64 `tonuvYGpksNFQBlEmm3lxg`).
pub const OFFICIAL_SALT_B64: &str = "tonuvYGpksNFQBlEmm3lxg";
/// PBKDF2 rounds of the official default, also used for new hashes.
pub const DEFAULT_ROUNDS: u32 = 600_000;

/// Refuse PHC strings that would make every login burn minutes of CPU.
const MAX_ROUNDS: u32 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prf {
    Sha256,
    Sha512,
}

/// A parsed `$pbkdf2-sha256$i=…,l=…$salt$hash` string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pbkdf2Hash {
    pub prf: Prf,
    pub rounds: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Pbkdf2Hash {
    /// Parses a PHC string; the error says what is wrong with it.
    pub fn parse(phc: &str) -> Result<Pbkdf2Hash, String> {
        let parts: Vec<&str> = phc.split('$').collect();
        let [empty, id, params, salt, hash] = parts[..] else {
            return Err("expected $pbkdf2-sha256$i=ROUNDS,l=LEN$SALT$HASH".into());
        };
        if !empty.is_empty() {
            return Err("a PHC string starts with '$'".into());
        }
        let prf = match id {
            "pbkdf2-sha256" => Prf::Sha256,
            "pbkdf2-sha512" => Prf::Sha512,
            other => {
                return Err(format!(
                    "unsupported algorithm {other:?} (use pbkdf2-sha256)"
                ));
            }
        };
        let mut rounds = None;
        let mut length = None;
        for param in params.split(',') {
            let (key, value) = param
                .split_once('=')
                .ok_or_else(|| format!("bad parameter {param:?}"))?;
            let n: u32 = value
                .parse()
                .map_err(|_| format!("parameter {key} is not a number"))?;
            match key {
                "i" => rounds = Some(n),
                "l" => length = Some(n as usize),
                _ => return Err(format!("unknown parameter {key:?}")),
            }
        }
        let rounds = rounds.ok_or("missing rounds parameter i")?;
        if rounds == 0 || rounds > MAX_ROUNDS {
            return Err(format!("rounds must be between 1 and {MAX_ROUNDS}"));
        }
        let salt = b64_decode(salt).ok_or("salt is not valid base64")?;
        let hash = b64_decode(hash).ok_or("hash is not valid base64")?;
        if hash.len() < 16 || hash.len() > 64 {
            return Err("hash must be 16 to 64 bytes".into());
        }
        if length.is_some_and(|l| l != hash.len()) {
            return Err("length parameter l does not match the hash".into());
        }
        Ok(Pbkdf2Hash {
            prf,
            rounds,
            salt,
            hash,
        })
    }

    /// Hashes `password` with these parameters (same salt, rounds, length).
    pub fn derive(&self, password: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.hash.len()];
        match self.prf {
            Prf::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, &self.salt, self.rounds, &mut out)
            }
            Prf::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &self.salt, self.rounds, &mut out)
            }
        }
        out
    }

    /// True when `password` matches; the comparison takes constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        ct_eq(&self.derive(password), &self.hash)
    }

    /// A new hash of `password` in the official format: PBKDF2-HMAC-SHA256,
    /// [`DEFAULT_ROUNDS`] rounds, a random 16-byte salt and a 32-byte output.
    pub fn new_random(password: &str) -> std::io::Result<Pbkdf2Hash> {
        Self::salted(password, DEFAULT_ROUNDS)
    }

    fn salted(password: &str, rounds: u32) -> std::io::Result<Pbkdf2Hash> {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt)
            .map_err(|e| std::io::Error::other(format!("no random salt: {e}")))?;
        let mut hash = Pbkdf2Hash {
            prf: Prf::Sha256,
            rounds,
            salt,
            hash: vec![0; 32],
        };
        hash.hash = hash.derive(password.as_bytes());
        Ok(hash)
    }

    /// The PHC string, e.g. `$pbkdf2-sha256$i=600000,l=32$SALT$HASH`.
    pub fn to_phc(&self) -> String {
        let id = match self.prf {
            Prf::Sha256 => "pbkdf2-sha256",
            Prf::Sha512 => "pbkdf2-sha512",
        };
        format!(
            "${id}$i={},l={}${}${}",
            self.rounds,
            self.hash.len(),
            b64_encode(&self.salt),
            b64_encode(&self.hash)
        )
    }

    /// The PHC string the official server would store for a plain password.
    pub fn official_for(password: &str) -> String {
        let template = Pbkdf2Hash {
            prf: Prf::Sha256,
            rounds: DEFAULT_ROUNDS,
            salt: b64_decode(OFFICIAL_SALT_B64).unwrap_or_default(),
            hash: vec![0; 32],
        };
        let hash = template.derive(password.as_bytes());
        format!(
            "$pbkdf2-sha256$i={DEFAULT_ROUNDS},l=32${OFFICIAL_SALT_B64}${}",
            b64_encode(&hash)
        )
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Compares two secrets of any length without leaking where they differ
/// (both are hashed to a fixed length first).
pub fn ct_eq_secret(a: &[u8], b: &[u8]) -> bool {
    ct_eq(&Sha256::digest(a), &Sha256::digest(b))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, with or without padding (PHC strings omit it).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding, and one lone char is impossible.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

/// Standard base64 without padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64_decode(&b64_encode(&data)).unwrap(), data);
        }
        assert_eq!(
            b64_decode(OFFICIAL_SALT_B64).unwrap(),
            [
                0xb6, 0x89, 0xee, 0xbd, 0x81, 0xa9, 0x92, 0xc3, 0x45, 0x40, 0x19, 0x44, 0x9a, 0x6d,
                0xe5, 0xc6
            ]
        );
        assert!(b64_decode("a").is_none());
        assert!(b64_decode("ab!c").is_none());
    }

    #[test]
    fn official_hash_of_a_plain_password() {
        // Reference value computed independently (Python hashlib).
        assert_eq!(
            Pbkdf2Hash::official_for("pass"),
            "$pbkdf2-sha256$i=600000,l=32$tonuvYGpksNFQBlEmm3lxg$oQ1sqlkoU7Qn72xNoIq+NHyW3yOOER8EZ6mIJiv5GYc"
        );
    }

    #[test]
    fn new_hashes_are_salted_and_verify() {
        let a = Pbkdf2Hash::new_random("pass").unwrap();
        let phc = a.to_phc();
        assert!(phc.starts_with("$pbkdf2-sha256$i=600000,l=32$"), "{phc}");
        let parsed = Pbkdf2Hash::parse(&phc).unwrap();
        assert_eq!(parsed, a);
        assert_eq!(parsed.salt.len(), 16);
        assert!(parsed.verify(b"pass"));
        // Cheap rounds for the rest: salts differ, wrong passwords fail.
        let b = Pbkdf2Hash::salted("pass", 10).unwrap();
        let c = Pbkdf2Hash::salted("pass", 10).unwrap();
        assert_ne!(b.salt, c.salt);
        assert!(!b.verify(b"Pass"));
        assert!(Pbkdf2Hash::parse(&b.to_phc()).unwrap().verify(b"pass"));
        // The official string prints back unchanged.
        let official = "$pbkdf2-sha256$i=600000,l=32$tonuvYGpksNFQBlEmm3lxg$oQ1sqlkoU7Qn72xNoIq+NHyW3yOOER8EZ6mIJiv5GYc";
        assert_eq!(Pbkdf2Hash::parse(official).unwrap().to_phc(), official);
    }

    #[test]
    fn verifies_sha512_strings() {
        let h = Pbkdf2Hash::parse(
            "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q",
        )
        .unwrap();
        assert!(h.verify(b"pass"));
        assert!(!h.verify(b"pasS"));
    }

    #[test]
    fn malformed_strings_say_why() {
        for (bad, needle) in [
            ("plain", "expected"),
            ("$pbkdf2$i=1$c2FsdA$aGFzaA", "unsupported"),
            (
                "$pbkdf2-sha256$x=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                "unknown parameter",
            ),
            (
                "$pbkdf2-sha256$l=32$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                "missing rounds",
            ),
            ("$pbkdf2-sha256$i=0$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA", "rounds"),
            ("$pbkdf2-sha256$i=10$!!$aGFzaGhhc2hoYXNoaGFzaA", "salt"),
            (
                "$pbkdf2-sha256$i=10,l=32$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                "length",
            ),
        ] {
            let err = Pbkdf2Hash::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn constant_time_helpers() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq_secret(b"a long secret", b"a long secret"));
        assert!(!ct_eq_secret(b"a", b"b"));
    }
}
