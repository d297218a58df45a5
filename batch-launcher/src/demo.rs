//! Deterministic demo data: users, balances and one business day of point transactions.
//!
//! Each user's data depends only on the seed and the user id, so the same arguments always give
//! the same rows whatever the chunking. Balances agree with the transactions: every
//! `balance_snapshot` is the running balance, and `point_balance.balance` is the last snapshot.

use batch_common::repository::METADATA_MIGRATIONS;
use chrono::{Duration, NaiveDate, NaiveDateTime};
use chrono_tz::Tz;
use core_domain::models::{
    NewPoint, NewPointBalance, NewUser, Point, PointBalance, PointType, User, UserStatus,
};
use core_domain::{Backend, Database, DbConnection, DbError, MigrationSet, dispatch};
use diesel_async::RunQueryDsl;

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Users 1..=users.
    pub users: u64,
    /// Average transactions per user (each user gets 0..=2×avg).
    pub transactions_per_user: u32,
    /// Business day of the transactions.
    pub date: NaiveDate,
    /// Business time zone.
    pub timezone: Tz,
    /// Generator seed.
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemoCounts {
    /// Users inserted.
    pub users: u64,
    /// Balances inserted.
    pub balances: u64,
    /// Transactions inserted.
    pub transactions: u64,
}

/// Users per transaction while seeding.
const CHUNK: u64 = 1000;

/// SplitMix64: tiny, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn for_user(seed: u64, user_id: u64) -> Self {
        Rng(seed ^ user_id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The rows of one user.
pub struct UserRows {
    /// The user.
    pub user: NewUser,
    /// The balance (after the day's transactions).
    pub balance: NewPointBalance,
    /// The day's transactions, oldest first; `point_balance_id` is filled in on insert.
    pub transactions: Vec<NewPoint>,
}

/// Generates one user's rows.
pub fn user_rows(spec: &DemoSpec, user_id: u64) -> UserRows {
    let mut rng = Rng::for_user(spec.seed, user_id);
    let (start, end) = batch_common::day_window_utc(spec.date, spec.timezone);
    let created = start - Duration::days(30);
    let id = user_id as i64;
    let status = if user_id.is_multiple_of(10) {
        UserStatus::Inactive
    } else {
        UserStatus::Active
    };
    let mut balance = rng.range(0, 50_000) as i64;
    let opening_version = rng.range(1, 20) as i64;
    let n = if spec.transactions_per_user == 0 {
        0
    } else {
        rng.range(0, 2 * u64::from(spec.transactions_per_user))
    };
    let window_micros = (end - start).num_microseconds().unwrap_or(86_400_000_000) as u64;
    let mut times: Vec<NaiveDateTime> = (0..n)
        .map(|_| start + Duration::microseconds(rng.range(0, window_micros - 1) as i64))
        .collect();
    times.sort_unstable();
    let mut transactions = Vec::with_capacity(times.len());
    for at in times {
        let roll = rng.range(0, 9);
        let (kind, amount) = if roll < 6 || balance < 100 {
            (PointType::Earn, rng.range(100, 5_000) as i64)
        } else if roll < 9 {
            (PointType::Use, (rng.range(100, 3_000) as i64).min(balance))
        } else {
            (PointType::Cancel, rng.range(50, 1_000) as i64)
        };
        balance += match kind {
            PointType::Use => -amount,
            // EARN credits; CANCEL reverses an earlier use.
            PointType::Earn | PointType::Cancel => amount,
        };
        transactions.push(NewPoint {
            user_id: id,
            amount,
            point_type: kind.as_str().to_owned(),
            description: Some(format!("demo {}", kind.as_str().to_ascii_lowercase())),
            balance_snapshot: balance,
            point_balance_id: 0,
            created_at: at,
        });
    }
    let updated_at = transactions.last().map_or(created, |t| t.created_at);
    UserRows {
        user: NewUser {
            id,
            name: format!("demo-user-{user_id}"),
            status: status.as_str().to_owned(),
            created_at: created,
            updated_at: created,
        },
        balance: NewPointBalance {
            user_id: id,
            balance,
            version: opening_version + transactions.len() as i64,
            updated_at,
        },
        transactions,
    }
}

/// Number of users and balances already in the database.
pub async fn existing_rows(db: &Database) -> Result<(i64, i64), DbError> {
    let mut conn = db.get().await?;
    Ok((
        User::count(&mut conn).await?,
        PointBalance::count(&mut conn).await?,
    ))
}

/// Deletes every row of every domain table — each registered module's own tables and the shared
/// entities, the tables of every set in `sets` but the batch metadata's — in one transaction:
/// the sets in reverse order (a module's tables before the shared ones they may refer to), each
/// set's tables in reverse declaration order.
pub async fn reset(db: &Database, sets: &[&'static MigrationSet]) -> Result<(), DbError> {
    let backend = db.url().backend();
    let statements: Vec<String> = sets
        .iter()
        .rev()
        .filter(|set| set.name != METADATA_MIGRATIONS.name)
        .flat_map(|set| set.tables().into_iter().rev())
        .map(|table| match backend {
            Backend::Mysql => format!("DELETE FROM `{table}`"),
            Backend::Postgres | Backend::Sqlite => format!("DELETE FROM \"{table}\""),
        })
        .collect();
    let mut conn = db.get().await?;
    let conn: &mut DbConnection = &mut conn;
    conn.transaction(|c| {
        Box::pin(async move {
            for sql in &statements {
                dispatch!(&mut *c, c => diesel::sql_query(sql.as_str()).execute(c).await)?;
            }
            Ok::<_, DbError>(())
        })
    })
    .await
}

/// Inserts the demo rows, one transaction per chunk of users. `progress` is called after each chunk
/// with the users written so far.
pub async fn seed(
    db: &Database,
    spec: &DemoSpec,
    mut progress: impl FnMut(u64),
) -> Result<DemoCounts, DbError> {
    let mut counts = DemoCounts::default();
    let mut first = 1;
    while first <= spec.users {
        let last = (first + CHUNK - 1).min(spec.users);
        let rows: Vec<UserRows> = (first..=last).map(|u| user_rows(spec, u)).collect();
        let mut conn = db.get().await?;
        let chunk = conn
            .transaction(|c| Box::pin(async move { insert_chunk(c, rows).await }))
            .await?;
        counts.users += chunk.users;
        counts.balances += chunk.balances;
        counts.transactions += chunk.transactions;
        progress(last);
        first = last + 1;
    }
    Ok(counts)
}

async fn insert_chunk(c: &mut DbConnection, rows: Vec<UserRows>) -> Result<DemoCounts, DbError> {
    let mut users = Vec::with_capacity(rows.len());
    let mut balances = Vec::with_capacity(rows.len());
    let mut txs = Vec::new();
    for r in rows {
        users.push(r.user);
        balances.push(r.balance);
        txs.push(r.transactions);
    }
    let user_ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let n_users = User::insert_many(c, users).await? as u64;
    let n_balances = PointBalance::insert_many(c, balances).await? as u64;
    let ids = PointBalance::ids_for_users(c, &user_ids).await?;
    let mut points = Vec::new();
    // `ids` and `txs` are both in user order.
    for ((_, balance_id), user_txs) in ids.into_iter().zip(txs) {
        points.extend(user_txs.into_iter().map(|mut t| {
            t.point_balance_id = balance_id;
            t
        }));
    }
    let n_points = Point::insert_many(c, points).await? as u64;
    Ok(DemoCounts {
        users: n_users,
        balances: n_balances,
        transactions: n_points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DemoSpec {
        DemoSpec {
            users: 100,
            transactions_per_user: 3,
            date: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            timezone: chrono_tz::Asia::Seoul,
            seed: 7,
        }
    }

    #[test]
    fn rows_are_deterministic_and_consistent() {
        let s = spec();
        let (start, end) = batch_common::day_window_utc(s.date, s.timezone);
        let mut total = 0;
        for u in 1..=s.users {
            let a = user_rows(&s, u);
            let b = user_rows(&s, u);
            assert_eq!(a.balance.balance, b.balance.balance);
            assert_eq!(a.transactions.len(), b.transactions.len());
            assert!(a.transactions.len() <= 6);
            total += a.transactions.len();
            for t in &a.transactions {
                assert!(
                    t.created_at >= start && t.created_at < end,
                    "{t:?} outside the day"
                );
                assert!(t.balance_snapshot >= 0);
            }
            if let Some(last) = a.transactions.last() {
                assert_eq!(last.balance_snapshot, a.balance.balance);
                assert_eq!(a.balance.updated_at, last.created_at);
            }
            assert_eq!(a.user.status == "INACTIVE", u % 10 == 0);
        }
        // About 3 per user on average.
        assert!((200..=400).contains(&total), "{total}");
        let other_seed = DemoSpec { seed: 8, ..spec() };
        let differs = (1..=s.users)
            .any(|u| user_rows(&s, u).balance.balance != user_rows(&other_seed, u).balance.balance);
        assert!(differs);
    }
}
