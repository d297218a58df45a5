//! The external asset API contract (ours to define; see the crate README) and its validation.

use serde::{Deserialize, Serialize};

/// `GET {api_base_url}/v1/users/{userId}/assets` → 200 with this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: a provider adding a field must not break the refresh.
#[serde(rename_all = "camelCase")]
pub struct AssetResponse {
    /// The user asked for; must equal the path's id.
    pub user_id: i64,
    /// Total assets in minor units; must equal cash + investment.
    pub total_amount: i64,
    /// Cash part, ≥ 0.
    pub cash_amount: i64,
    /// Investment part, ≥ 0.
    pub investment_amount: i64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// When the provider computed the figures (RFC 3339).
    pub as_of: chrono::DateTime<chrono::Utc>,
}

/// The path of a user's assets, relative to the base URL.
pub fn asset_path(user_id: i64) -> String {
    format!("v1/users/{user_id}/assets")
}

impl AssetResponse {
    /// Checks the body against the contract for `user_id`; the error names the field and value.
    pub fn validate(&self, user_id: i64) -> Result<(), String> {
        if self.user_id != user_id {
            return Err(format!(
                "userId {} does not match the requested user {user_id}",
                self.user_id
            ));
        }
        if self.cash_amount < 0 {
            return Err(format!("cashAmount {} is negative", self.cash_amount));
        }
        if self.investment_amount < 0 {
            return Err(format!(
                "investmentAmount {} is negative",
                self.investment_amount
            ));
        }
        if self.cash_amount.checked_add(self.investment_amount) != Some(self.total_amount) {
            return Err(format!(
                "totalAmount {} is not cashAmount {} + investmentAmount {}",
                self.total_amount, self.cash_amount, self.investment_amount
            ));
        }
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "currency `{}` is not an ISO 4217 code",
                self.currency
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> AssetResponse {
        AssetResponse {
            user_id: 7,
            total_amount: 30,
            cash_amount: 10,
            investment_amount: 20,
            currency: "KRW".into(),
            as_of: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn contract_checks_name_the_field() {
        assert!(ok().validate(7).is_ok());
        assert!(ok().validate(8).unwrap_err().contains("userId 7"));
        assert!(
            AssetResponse {
                cash_amount: -1,
                investment_amount: 31,
                ..ok()
            }
            .validate(7)
            .unwrap_err()
            .contains("cashAmount -1")
        );
        assert!(
            AssetResponse {
                total_amount: 31,
                ..ok()
            }
            .validate(7)
            .unwrap_err()
            .contains("totalAmount 31")
        );
        assert!(
            AssetResponse {
                currency: "won".into(),
                ..ok()
            }
            .validate(7)
            .unwrap_err()
            .contains("`won`")
        );
        let json = serde_json::to_string(&ok()).unwrap();
        assert!(
            json.contains("\"totalAmount\":30") && json.contains("\"asOf\""),
            "{json}"
        );
        let extra = json.replace("\"currency\"", "\"extra\":1,\"currency\"");
        assert_eq!(serde_json::from_str::<AssetResponse>(&extra).unwrap(), ok());
    }
}
