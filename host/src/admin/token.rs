//! The admin token: kept only as its SHA-256 digest, and compared with what a request carries
//! digest to digest, in constant time. Both sides are 32 bytes whatever the tokens' lengths, so
//! how long a refusal takes tells neither the token's content nor its length.

use sha2::{Digest as _, Sha256};

/// The token changes need.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(token: &str) -> Token {
        Token {
            digest: digest(token.as_bytes()),
        }
    }

    /// Whether an `Authorization` header's value carries this token as `Bearer <token>` (the
    /// scheme in any case, spaces around the token ignored).
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        let given = header.and_then(bearer);
        // A missing or malformed header is compared too (as an empty token, never accepted), so
        // that it takes as long as a wrong one.
        let same = same_digest(&self.digest, &digest(given.unwrap_or_default()));
        same & given.is_some()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of `Bearer <token>`.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let space = header.iter().position(|b| *b == b' ')?;
    let (scheme, token) = header.split_at(space);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// Whether two digests are equal, looking at every byte whatever the first difference.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let t = Token::new("s3cret");
        let ok = |h: &str| t.authorizes(Some(h.as_bytes()));
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer s3cret"));
        assert!(ok("Bearer  s3cret "));
        assert!(!ok("Bearer s3cre"));
        assert!(!ok("Bearer s3cret2"));
        assert!(!ok("s3cret"));
        assert!(!ok("Bearer "));
        assert!(!ok("Basic s3cret"));
        assert!(!ok(""));
        assert!(!t.authorizes(None));
        assert!(!Token::new("").authorizes(Some(b"Bearer ")), "never empty");
        assert_eq!(format!("{t:?}"), "Token(..)", "the token is not kept");
    }

    #[test]
    fn tokens_of_any_length_are_compared_as_equal_length_digests() {
        // What is compared is two 32-byte digests: a token of another length (a prefix, a longer
        // one, a huge one) differs in content, not in how much is compared.
        let t = Token::new("s3cret");
        for given in ["s", "s3cre", "s3cret-and-more", &"x".repeat(64 << 10)] {
            assert_eq!(digest(given.as_bytes()).len(), t.digest.len());
            assert!(!t.authorizes(Some(format!("Bearer {given}").as_bytes())));
        }
        // Every byte counts, the last as much as the first.
        let mut last = t.digest;
        last[31] ^= 1;
        let mut first = t.digest;
        first[0] ^= 0x80;
        assert!(!same_digest(&t.digest, &last));
        assert!(!same_digest(&t.digest, &first));
        assert!(same_digest(&t.digest, &digest(b"s3cret")));
    }
}
