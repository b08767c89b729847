//! Partner tokens as the store keeps them: one record per token in `meta`, keyed by the token's SHA-256.
//!
//! Keys: `token/` + the 32 bytes of the hash → [`PartnerToken`] (record version 1). A request's token
//! is found with one point read of its hash (sled's page cache keeps the few token records in
//! memory), so no copy is kept here and there is nothing to reload after a reopen; a revocation is
//! seen by the very next request. Listing and revoking by id scan the prefix: tokens are few.

use super::codec::Record;
use super::writer::TreeId;
use super::SledStore;
use crate::model::PartnerToken;
use crate::store::StoreError;

/// The `meta` key prefix of partner tokens.
const TOKEN_PREFIX: &[u8] = b"token/";

impl Record for PartnerToken {
    const VERSION: u8 = 1;
    const NAME: &'static str = "partner token";
}

fn token_key(hash: &[u8; 32]) -> Vec<u8> {
    let mut key = TOKEN_PREFIX.to_vec();
    key.extend_from_slice(hash);
    key
}

impl SledStore {
    /// Stores a new partner token, durably; its number (and so its id) is assigned here.
    pub async fn create_token(&self, mut token: PartnerToken) -> Result<PartnerToken, StoreError> {
        self.write(true, move |tx| {
            token.num = tx.generate_id()?;
            tx.put(TreeId::Meta, &token_key(&token.hash), &token)?;
            Ok(token.clone())
        })
        .await
    }

    /// The token whose SHA-256 is `hash`, live or not (the caller decides, and names it when refusing).
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<PartnerToken>, StoreError> {
        match self.inner.state.sled()?.trees.meta.get(token_key(hash))? {
            Some(v) => Ok(Some(PartnerToken::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every stored token (revoked and expired ones too, until retention removes them), oldest
    /// first, only `partner_id`'s when given.
    pub fn tokens(&self, partner_id: Option<&str>) -> Result<Vec<PartnerToken>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .meta
            .scan_prefix(TOKEN_PREFIX)
        {
            let (_, v) = item?;
            let token = PartnerToken::decode(&v)?;
            if partner_id.is_none_or(|p| p == token.partner_id) {
                out.push(token);
            }
        }
        out.sort_by_key(|t| t.num);
        Ok(out)
    }

    /// Revokes token `num` as of `now_ms`, durably: the next request with it is refused. `None` when
    /// there is no such token; a token revoked before keeps its first revocation time.
    pub async fn revoke_token(
        &self,
        num: u64,
        now_ms: u64,
    ) -> Result<Option<PartnerToken>, StoreError> {
        let Some(found) = self.tokens(None)?.into_iter().find(|t| t.num == num) else {
            return Ok(None);
        };
        self.write(true, move |tx| {
            let key = token_key(&found.hash);
            let Some(mut token) = tx.get::<PartnerToken>(TreeId::Meta, &key)? else {
                return Ok(None);
            };
            if token.revoked_at_ms.is_none() {
                token.revoked_at_ms = Some(now_ms);
                tx.put(TreeId::Meta, &key, &token)?;
            }
            Ok(Some(token))
        })
        .await
    }

    /// Retention: removes tokens that expired or were revoked before `ended_before_ms`. Returns how many.
    pub async fn purge_tokens(&self, ended_before_ms: u64) -> Result<u32, StoreError> {
        let ended: Vec<[u8; 32]> = self
            .tokens(None)?
            .into_iter()
            .filter(|t| t.revoked_at_ms.unwrap_or(t.expires_at_ms) < ended_before_ms)
            .map(|t| t.hash)
            .collect();
        if ended.is_empty() {
            return Ok(0);
        }
        self.write(false, move |tx| {
            let mut removed = 0;
            for hash in &ended {
                if tx.remove_existing(TreeId::Meta, &token_key(hash))? {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Environment;

    fn sample() -> PartnerToken {
        PartnerToken {
            num: 5,
            hash: [7; 32],
            partner_id: "acme-health".into(),
            environment: Some(Environment::Sandbox),
            read_only: true,
            description: "portal".into(),
            created_at_ms: 1_768_503_852_000,
            expires_at_ms: 1_771_095_852_000,
            revoked_at_ms: Some(1_768_503_900_000),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Golden bytes: if this changes, stored tokens no longer read. Bump the version instead.
    #[test]
    fn golden_partner_token() {
        let bytes = sample().encode();
        assert_eq!(
            format!("{}\n", hex(&bytes)),
            include_str!("../../../tests/fixtures/golden/token.v1.hex")
        );
        assert_eq!(PartnerToken::decode(&bytes).unwrap(), sample());
    }

    #[tokio::test]
    async fn tokens_are_found_by_hash_listed_revoked_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let mut a = sample();
        a.revoked_at_ms = None;
        let a = store.create_token(a).await.unwrap();
        let b = store
            .create_token(PartnerToken {
                hash: [8; 32],
                partner_id: "other".into(),
                revoked_at_ms: None,
                ..sample()
            })
            .await
            .unwrap();
        assert_ne!(a.num, b.num);
        assert_eq!(store.token_by_hash(&[7; 32]).unwrap(), Some(a.clone()));
        assert_eq!(store.token_by_hash(&[9; 32]).unwrap(), None);
        assert_eq!(store.tokens(None).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(store.tokens(Some("other")).unwrap(), vec![b.clone()]);
        let revoked = store.revoke_token(a.num, 100).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(100));
        // A second revocation keeps the first time.
        let again = store.revoke_token(a.num, 200).await.unwrap().unwrap();
        assert_eq!(again.revoked_at_ms, Some(100));
        assert_eq!(store.revoke_token(999, 100).await.unwrap(), None);
        // Revoked at 100: gone once retention reaches past it; b (expires later) stays.
        assert_eq!(store.purge_tokens(101).await.unwrap(), 1);
        assert_eq!(store.tokens(None).unwrap(), vec![b]);
        store.close().unwrap();
    }
}
