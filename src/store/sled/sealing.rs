//! Endpoint secrets at rest: sealed with XChaCha20-Poly1305 under the operator's master key, each bound to its endpoint.
//!
//! With a master key configured, every secret an endpoint record holds (the current one and any still
//! in its rotation grace) is stored as a random 24-byte nonce and the AEAD ciphertext of the secret,
//! whose associated data names the endpoint (`ASSOCIATED_DATA` + its number): a sealed secret copied
//! onto another endpoint's record does not open. Without a key, secrets are stored in the clear, as
//! the contract allows. A second, previous key lets a store sealed under it be opened once and
//! sealed again under the new one (key rotation); a previous key alone opens it and writes the
//! secrets back in the clear (turning encryption off).

use super::codec::{EndpointRecord, SecretAtRest, StoredSecret};
use crate::model::{Endpoint, EndpointSecret};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};

/// A master key is 32 bytes: given as 32 raw bytes, or as 64 hex digits (surrounding whitespace allowed).
pub const KEY_BYTES: usize = 32;

/// Prefix of every sealed secret's associated data, before the endpoint's number (big-endian).
const ASSOCIATED_DATA: &[u8] = b"preflix-webhookd endpoint secret\0";

/// One master key, ready to seal and open; the raw bytes are not kept (the cipher zeroizes its
/// copy on drop). `Debug` shows where it came from, never the key.
#[derive(Clone)]
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    /// The file it was read from, for messages.
    source: PathBuf,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Reads a key file's content: exactly 32 bytes, or 64 hex digits. The error ends a sentence
    /// that starts with the file's name.
    pub fn parse(content: &[u8], source: &Path) -> Result<MasterKey, String> {
        let key: Vec<u8> = if content.len() == KEY_BYTES {
            content.to_vec()
        } else {
            let text = content.trim_ascii();
            if text.len() != 2 * KEY_BYTES || !text.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "holds {} bytes; a master key is exactly {KEY_BYTES} bytes (make one with \
                     `head -c 32 /dev/urandom > master_key`) or {} hex digits",
                    content.len(),
                    2 * KEY_BYTES
                ));
            }
            text.chunks(2)
                .map(|pair| {
                    let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
                    u8::from_str_radix(pair, 16).expect("checked to be hex digits")
                })
                .collect()
        };
        if key.iter().all(|&b| b == 0) {
            return Err("holds only zero bytes; make a key with `head -c 32 /dev/urandom`".into());
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("the key has 32 bytes");
        Ok(MasterKey {
            cipher,
            source: source.to_path_buf(),
        })
    }

    /// The file the key was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    fn seal(&self, endpoint_num: u64, secret: &str, nonce: &XNonce) -> SecretAtRest {
        let aad = associated_data(endpoint_num);
        let ciphertext = self
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any secret of a sane size");
        SecretAtRest::Sealed {
            nonce: (*nonce).into(),
            ciphertext,
        }
    }

    fn open(&self, endpoint_num: u64, nonce: &[u8; 24], ciphertext: &[u8]) -> Option<String> {
        let aad = associated_data(endpoint_num);
        let clear = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()?;
        String::from_utf8(clear).ok()
    }
}

/// The keys a store is opened with.
#[derive(Debug, Clone, Default)]
pub struct MasterKeys {
    /// The key secrets are sealed with; `None`: they are stored in the clear.
    pub current: Option<MasterKey>,
    /// A key secrets may still be sealed with (rotation); they are sealed again with `current`.
    pub previous: Option<MasterKey>,
}

/// Why an endpoint's secrets could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the secrets of endpoint {endpoint_id} are encrypted and no master key is configured: set \
         storage.master_key_file, or pass the key as the systemd credential `master_key`"
    )]
    NoKey { endpoint_id: String },
    #[error(
        "the secrets of endpoint {endpoint_id} do not decrypt with {tried}: it is not the key they \
         were encrypted with (or the record is damaged); to change keys, give the old one as \
         storage.previous_master_key_file"
    )]
    WrongKey { endpoint_id: String, tried: String },
}

impl MasterKeys {
    /// The endpoint as stored: each secret sealed with the current key, or in the clear without one.
    pub fn seal(&self, ep: &Endpoint) -> EndpointRecord {
        self.seal_with(ep, || XChaCha20Poly1305::generate_nonce(&mut OsRng))
    }

    pub(crate) fn seal_with(
        &self,
        ep: &Endpoint,
        mut nonce: impl FnMut() -> XNonce,
    ) -> EndpointRecord {
        let secrets = ep
            .secrets
            .iter()
            .map(|s| StoredSecret {
                value: match &self.current {
                    Some(key) => key.seal(ep.num, &s.secret, &nonce()),
                    None => SecretAtRest::Clear(s.secret.clone()),
                },
                expires_at_ms: s.expires_at_ms,
            })
            .collect();
        EndpointRecord {
            endpoint: Endpoint {
                secrets: Vec::new(),
                ..ep.clone()
            },
            secrets,
        }
    }

    /// The endpoint a stored record holds, and whether the record should be written again because
    /// it is not in the form the current key asks for (in the clear while a key is configured,
    /// sealed with the previous key, or sealed while no key is configured).
    pub fn open(&self, record: EndpointRecord) -> Result<(Endpoint, bool), SealError> {
        let mut ep = record.endpoint;
        let mut stale = false;
        let mut secrets = Vec::with_capacity(record.secrets.len());
        for stored in record.secrets {
            let secret = match stored.value {
                SecretAtRest::Clear(secret) => {
                    stale |= self.current.is_some();
                    secret
                }
                SecretAtRest::Sealed { nonce, ciphertext } => {
                    let with = |key: &Option<MasterKey>| {
                        key.as_ref()
                            .and_then(|k| k.open(ep.num, &nonce, &ciphertext))
                    };
                    if let Some(secret) = with(&self.current) {
                        secret
                    } else if let Some(secret) = with(&self.previous) {
                        stale = true;
                        secret
                    } else {
                        return Err(self.failure(&ep));
                    }
                }
            };
            secrets.push(EndpointSecret {
                secret,
                expires_at_ms: stored.expires_at_ms,
            });
        }
        ep.secrets = secrets;
        Ok((ep, stale))
    }

    fn failure(&self, ep: &Endpoint) -> SealError {
        let keys: Vec<String> = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .map(|k| format!("the master key in {}", k.source.display()))
            .collect();
        if keys.is_empty() {
            SealError::NoKey {
                endpoint_id: ep.id(),
            }
        } else {
            SealError::WrongKey {
                endpoint_id: ep.id(),
                tried: keys.join(" or "),
            }
        }
    }
}

fn associated_data(endpoint_num: u64) -> Vec<u8> {
    let mut aad = ASSOCIATED_DATA.to_vec();
    aad.extend_from_slice(&endpoint_num.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::parse(&[byte; 32], Path::new("test")).unwrap()
    }

    fn endpoint(num: u64) -> Endpoint {
        Endpoint {
            secrets: vec![
                EndpointSecret {
                    secret: "whsec_new".into(),
                    expires_at_ms: None,
                },
                EndpointSecret {
                    secret: "whsec_old".into(),
                    expires_at_ms: Some(9),
                },
            ],
            ..Endpoint::sample(num, "acme-health", crate::model::Environment::Production)
        }
    }

    fn keys(current: Option<u8>, previous: Option<u8>) -> MasterKeys {
        MasterKeys {
            current: current.map(key),
            previous: previous.map(key),
        }
    }

    #[test]
    fn key_files_are_32_bytes_or_64_hex_digits() {
        let p = Path::new("k");
        assert!(MasterKey::parse(&[1; 32], p).is_ok());
        let hex = "ab".repeat(32);
        assert!(MasterKey::parse(hex.as_bytes(), p).is_ok());
        assert!(MasterKey::parse(format!("{hex}\n").as_bytes(), p).is_ok());
        for bad in [
            &b""[..],
            &[1; 31],
            &[1; 33],
            &[1; 64],
            "zz".repeat(32).as_bytes(),
        ] {
            let e = MasterKey::parse(bad, p).unwrap_err();
            assert!(e.contains("exactly 32 bytes"), "{e}");
        }
        assert!(MasterKey::parse(&[0; 32], p).unwrap_err().contains("zero"));
        assert!(!format!("{:?}", key(1)).contains("cipher"));
    }

    #[test]
    fn sealed_secrets_open_with_their_key_on_their_endpoint_only() {
        let ep = endpoint(2);
        let record = keys(Some(1), None).seal(&ep);
        assert!(record.endpoint.secrets.is_empty());
        for s in &record.secrets {
            let SecretAtRest::Sealed { ciphertext, .. } = &s.value else {
                panic!("sealed");
            };
            assert!(!ciphertext.windows(5).any(|w| w == b"whsec"));
        }
        assert_eq!(
            keys(Some(1), None).open(record.clone()).unwrap(),
            (ep.clone(), false)
        );
        // Wrong key, no key.
        let e = keys(Some(2), None).open(record.clone()).unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
        let e = keys(None, None).open(record.clone()).unwrap_err();
        assert!(matches!(e, SealError::NoKey { .. }), "{e}");
        // Moved onto another endpoint: the associated data no longer matches.
        let mut moved = record.clone();
        moved.endpoint.num = 3;
        assert!(keys(Some(1), None).open(moved).is_err());
    }

    #[test]
    fn rotation_opens_with_the_previous_key_and_asks_for_a_rewrite() {
        let ep = endpoint(2);
        let old = keys(Some(1), None).seal(&ep);
        assert_eq!(
            keys(Some(2), Some(1)).open(old.clone()).unwrap(),
            (ep.clone(), true)
        );
        // A previous key alone opens it, to be written back in the clear.
        assert_eq!(keys(None, Some(1)).open(old).unwrap(), (ep.clone(), true));
        // Clear secrets are stale once a key is configured, and fine without one.
        let clear = keys(None, None).seal(&ep);
        assert!(matches!(clear.secrets[0].value, SecretAtRest::Clear(_)));
        assert!(!keys(None, None).open(clear.clone()).unwrap().1);
        assert!(keys(Some(1), None).open(clear).unwrap().1);
    }
}
