//! Token refreshes in group commits (`sovra_auth::refresh_batch`): refreshes
//! that arrive together are rotated by one statement in one transaction,
//! with the same rules as one at a time. Each test holds the writer, lets a
//! known set of refreshes queue, and releases it, so the batches are known.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use support::auth_client::{Auth, Reply, config, token};

/// Runs `refreshes` concurrently while the batch writer is held, and
/// releases it once all of them wait in its queue. Returns the replies and
/// how many batches ran for them.
async fn in_one_go(auth: &Auth, refreshes: &[String]) -> (Vec<Reply>, u64) {
    let service = &auth.app.tenant.auth;
    let stats = service.refresh_batch_stats();
    let before = stats.batches.load(Ordering::Relaxed);
    let gate = service.hold_refresh_batches().await;
    let release = async {
        while stats.waiting.load(Ordering::Relaxed) < refreshes.len() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        drop(gate);
    };
    let (replies, ()) = tokio::join!(join_all(refreshes.iter().map(|t| auth.refresh(t))), release);
    (replies, stats.batches.load(Ordering::Relaxed) - before)
}

async fn signed_in(auth: &Auth, who: &str) -> Value {
    let email = format!("{who}@example.com");
    auth.user(&email, "password1").await;
    auth.session(&email, "password1").await
}

async fn count(auth: &Auth, sql: &str) -> i64 {
    auth.sql(sql).await[0].get(0)
}

#[tokio::test]
async fn refreshes_of_different_tokens_commit_in_one_batch() {
    let auth = Auth::new().await;
    let mut tokens = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let session = signed_in(&auth, &format!("batch{i}")).await;
        tokens.push(token(&session, "refresh_token"));
        sessions.push(session);
    }
    let (replies, batches) = in_one_go(&auth, &tokens).await;
    assert_eq!(batches, 1, "six distinct tokens, one batch");
    let mut next = Vec::new();
    for (reply, session) in replies.iter().zip(&sessions) {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        // Each caller got its own user and session back.
        assert_eq!(reply.body["user"]["id"], session["user"]["id"]);
        let before = support::auth_client::claims(&token(session, "access_token"));
        let after = support::auth_client::claims(&token(&reply.body, "access_token"));
        assert_eq!(after["session_id"], before["session_id"]);
        assert_eq!(after["sub"], before["sub"]);
        assert_eq!(after["amr"][0]["method"], "password");
        next.push(token(&reply.body, "refresh_token"));
    }
    let distinct: std::collections::HashSet<_> = next.iter().collect();
    assert_eq!(distinct.len(), 6);
    assert!(next.iter().all(|t| !tokens.contains(t)));
    assert_eq!(
        count(
            &auth,
            "select count(*) from auth.refresh_tokens where revoked"
        )
        .await,
        6
    );
    assert_eq!(
        count(
            &auth,
            "select count(*) from auth.refresh_tokens where not revoked and parent is not null"
        )
        .await,
        6
    );
    // The successors work, again together.
    let (again, batches) = in_one_go(&auth, &next).await;
    assert_eq!(batches, 1);
    assert!(again.iter().all(|r| r.status == StatusCode::OK));
}

#[tokio::test]
async fn a_batch_answers_refusals_as_one_refresh_does() {
    let auth = Auth::new().await;
    let live = token(&signed_in(&auth, "live").await, "refresh_token");
    let banned = signed_in(&auth, "banned").await;
    auth.sql(&format!(
        "update auth.users set banned_until = now() + interval '1 day' where id = '{}'",
        banned["user"]["id"].as_str().unwrap()
    ))
    .await;
    let refreshes = [
        live.clone(),
        token(&banned, "refresh_token"),
        "no-such-token".to_owned(),
    ];
    let (replies, _) = in_one_go(&auth, &refreshes).await;
    assert_eq!(replies[0].status, StatusCode::OK, "{:?}", replies[0].body);
    assert_eq!(replies[1].status, StatusCode::BAD_REQUEST);
    assert_eq!(replies[1].code(), "user_banned");
    assert_eq!(replies[2].status, StatusCode::BAD_REQUEST);
    assert_eq!(replies[2].code(), "refresh_token_not_found");
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_rotate_it_once() {
    let auth = Auth::new().await;
    let session = signed_in(&auth, "tabs").await;
    let first = token(&session, "refresh_token");
    let same = vec![first.clone(); 3];
    let (replies, batches) = in_one_go(&auth, &same).await;
    // A batch holds a token once: each repeat saw the previous commit.
    assert_eq!(batches, 3);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    // Within the reuse interval every caller gets the one successor.
    let successor = token(&replies[0].body, "refresh_token");
    assert!(
        replies
            .iter()
            .all(|r| token(&r.body, "refresh_token") == successor)
    );
    assert_eq!(
        count(&auth, "select count(*) from auth.refresh_tokens").await,
        2,
        "one rotation"
    );
    let next = auth.refresh(&successor).await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
}

#[tokio::test]
async fn without_a_reuse_interval_a_concurrent_repeat_ends_the_session() {
    let auth = Auth::with(config(|c| c.auth.refresh_token_reuse_interval = 0)).await;
    let session = signed_in(&auth, "strict").await;
    let first = token(&session, "refresh_token");
    let (replies, _) = in_one_go(&auth, &[first.clone(), first.clone()]).await;
    let ok: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert_eq!(ok.len(), 1, "only one refresh wins");
    let refused = replies.iter().find(|r| r.status != StatusCode::OK).unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.code(), "refresh_token_already_used");
    // Reuse ended the session: the winner's successor is dead too.
    let after = auth.refresh(&token(&ok[0].body, "refresh_token")).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
    assert_eq!(count(&auth, "select count(*) from auth.sessions").await, 0);
}

#[tokio::test]
async fn a_failing_commit_gives_every_caller_an_error_and_no_token() {
    let auth = Auth::new().await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(token(
            &signed_in(&auth, &format!("fail{i}")).await,
            "refresh_token",
        ));
    }
    // A deferred constraint trigger refuses the commit while the flag is
    // set: the statement succeeds, the commit fails.
    for sql in [
        "create table public.refuse_commit (on_ boolean)",
        "create function public.refuse_commit() returns trigger language plpgsql
           security definer set search_path = '' as $$
         begin
           if exists (select 1 from public.refuse_commit) then
             raise exception 'commit refused by the test';
           end if;
           return null;
         end $$",
        "create constraint trigger refuse_commit after insert on auth.refresh_tokens
           deferrable initially deferred for each row execute function public.refuse_commit()",
        "insert into public.refuse_commit values (true)",
    ] {
        auth.sql(sql).await;
    }
    let (replies, batches) = in_one_go(&auth, &tokens).await;
    assert_eq!(batches, 1);
    for reply in &replies {
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            reply.body
        );
        assert!(reply.body.get("access_token").is_none());
        assert!(reply.body.get("refresh_token").is_none());
    }
    // Nothing was committed: no successor, no token retired.
    assert_eq!(
        count(
            &auth,
            "select count(*) from auth.refresh_tokens where parent is not null or revoked"
        )
        .await,
        0
    );
    // Once commits go through again, every original token still works.
    auth.sql("delete from public.refuse_commit").await;
    let (replies, batches) = in_one_go(&auth, &tokens).await;
    assert_eq!(batches, 1);
    assert!(
        replies.iter().all(|r| r.status == StatusCode::OK),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
}

/// A batch finds its tokens by index however many tokens were issued after
/// its statement first ran: a cached generic plan made under the default
/// planner settings while `auth.refresh_tokens` was small scanned the whole
/// table in every batch from then on (this test fails with the batch's
/// `enable_*` settings taken out).
#[tokio::test]
async fn a_batch_reads_tokens_by_index_after_the_table_grew() {
    let auth = Auth::new().await;
    let session = signed_in(&auth, "grow").await;
    let mut refresh = token(&session, "refresh_token");
    // Eight batches while the table holds a handful of tokens: each
    // connection they ran on made its generic plan then.
    for _ in 0..8 {
        let reply = auth.refresh(&refresh).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        refresh = token(&reply.body, "refresh_token");
    }
    auth.sql(
        "insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at) \
         select 'filler' || g, 'nobody', true, now(), now() from generate_series(1, 20000) g",
    )
    .await;
    let scans = || async {
        let rows = auth
            .sql(
                "select seq_scan, coalesce(idx_scan, 0) from pg_stat_user_tables \
                 where schemaname = 'auth' and relname = 'refresh_tokens'",
            )
            .await;
        (rows[0].get::<_, i64>(0), rows[0].get::<_, i64>(1))
    };
    // Backends report their counts within about ten seconds of going idle.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let (seq_before, idx_before) = scans().await;
    let reply = auth.refresh(&refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (seq, idx) = scans().await;
        if idx > idx_before {
            assert_eq!(seq, seq_before, "the refresh scanned all 20,000 tokens");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no index lookup of the tokens (sequential scans {seq_before} -> {seq})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
