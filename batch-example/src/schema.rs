// The tables this module owns, as diesel `table!`s (the schema check compares them with every
// migrated backend; `seed-demo --reset` empties them, last declared first).

diesel::table! {
    /// One statement per member and month.
    member_statement (user_id, period) {
        /// The member (`users.id`, core-domain's shared entity).
        user_id -> BigInt,
        /// The month, `YYYY-MM`.
        period -> Varchar,
        /// `NEW` or `REGULAR` at the month's end.
        tier -> Varchar,
        /// The fee, in the smallest currency unit.
        fee -> BigInt,
        /// First written (UTC).
        created_at -> Timestamp,
        /// Last written (UTC).
        updated_at -> Timestamp,
    }
}

// No `joinable!` with `users`: the orphan rule refuses diesel's join impls between tables of two
// crates. Read the shared entity through core-domain (`User::find_many`, `ActiveUsers`) by id.
