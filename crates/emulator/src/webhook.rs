//! `workflow_job` webhooks: payloads shaped like GitHub's, signed with
//! HMAC-SHA256, delivered in order per job with a few retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use uuid::Uuid;

use crate::http_util::timestamp;
use crate::model::{Job, node_id};
use crate::state::{Shared, World};

/// The header carrying `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub(crate) const USER_AGENT: &str = "GitHub-Hookshot/emulator";
/// Pauses between delivery attempts; one more attempt than pauses.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// `sha256=<hex>`: the value of `X-Hub-Signature-256` for `body`.
pub fn sign_payload(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Clone)]
pub(crate) struct PendingDelivery {
    pub id: Uuid,
    pub action: &'static str,
    pub job_id: u64,
    pub body: Bytes,
}

/// What happened to one delivery (admin API `GET /_emulator/deliveries`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryRecord {
    pub id: String,
    pub event: &'static str,
    pub action: &'static str,
    pub job_id: u64,
    /// `delivered`, `failed`, `dropped` (fault knob) or `no_target`.
    pub outcome: &'static str,
    pub attempts: u32,
    pub status_code: Option<u16>,
}

/// Builds the payload for `job` now and queues it behind the job's earlier
/// events. Called with the state locked, so events of one job keep the
/// order of the changes that caused them.
pub(crate) fn enqueue(shared: &Arc<Shared>, world: &mut World, action: &'static str, job_id: u64) {
    let Some(job) = world.jobs.get(&job_id).cloned() else {
        return;
    };
    let payload = payload(shared, world, action, &job);
    let body = match serde_json::to_vec(&payload) {
        Ok(b) => Bytes::from(b),
        Err(_) => return,
    };
    let delivery = PendingDelivery {
        id: Uuid::now_v7(),
        action,
        job_id,
        body,
    };
    let sender = world.webhook_queues.entry(job_id).or_insert_with(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver_in_order(shared.clone(), rx));
        tx
    });
    let _ = sender.send(delivery);
    if action == "completed" {
        // Dropping the sender lets the job's delivery task end once drained.
        world.webhook_queues.remove(&job_id);
    }
}

fn payload(shared: &Shared, world: &mut World, action: &str, job: &Job) -> Value {
    let base = &shared.settings.public_url;
    let repository_id = world.repository_id(&job.owner, &job.repo);
    let owner_id = world.account_id(&job.owner);
    let mut p = Map::new();
    p.insert("action".into(), Value::from(action));
    p.insert("workflow_job".into(), job.to_json(base));
    p.insert(
        "repository".into(),
        repository_json(base, &job.owner, &job.repo, repository_id, owner_id),
    );
    p.insert("sender".into(), sender_json(base));
    p.insert(
        "organization".into(),
        organization_json(base, &job.owner, owner_id),
    );
    if shared.settings.app.is_some() {
        let installation = world.installation_for(&job.owner);
        p.insert(
            "installation".into(),
            json!({"id": installation, "node_id": node_id("Installation", installation)}),
        );
    }
    Value::Object(p)
}

fn host_of(base: &str) -> &str {
    base.split_once("://").map(|(_, rest)| rest).unwrap_or(base)
}

fn user_like_json(base: &str, login: &str, id: u64, kind: &str) -> Value {
    let u = format!("{base}/users/{login}");
    json!({
        "login": login,
        "id": id,
        "node_id": node_id(kind, id),
        "avatar_url": format!("{base}/avatars/{login}"),
        "gravatar_id": "",
        "url": u,
        "html_url": format!("{base}/{login}"),
        "followers_url": format!("{u}/followers"),
        "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"),
        "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"),
        "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"),
        "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"),
        "type": kind,
        "site_admin": false,
    })
}

fn sender_json(base: &str) -> Value {
    user_like_json(base, "emulator-user", 1, "User")
}

fn organization_json(base: &str, org: &str, id: u64) -> Value {
    let o = format!("{base}/orgs/{org}");
    json!({
        "login": org,
        "id": id,
        "node_id": node_id("Organization", id),
        "url": o,
        "repos_url": format!("{o}/repos"),
        "events_url": format!("{o}/events"),
        "hooks_url": format!("{o}/hooks"),
        "issues_url": format!("{o}/issues"),
        "members_url": format!("{o}/members{{/member}}"),
        "public_members_url": format!("{o}/public_members{{/member}}"),
        "avatar_url": format!("{base}/avatars/{org}"),
        "description": "",
    })
}

fn repository_json(base: &str, owner: &str, repo: &str, id: u64, owner_id: u64) -> Value {
    let api = format!("{base}/repos/{owner}/{repo}");
    let html = format!("{base}/{owner}/{repo}");
    let host = host_of(base);
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("id", Value::from(id));
    put("node_id", Value::from(node_id("Repository", id)));
    put("name", Value::from(repo));
    put("full_name", Value::from(format!("{owner}/{repo}")));
    put("private", Value::from(false));
    put(
        "owner",
        user_like_json(base, owner, owner_id, "Organization"),
    );
    put("html_url", Value::from(html.clone()));
    put("description", Value::Null);
    put("fork", Value::from(false));
    put("url", Value::from(api.clone()));
    for (key, suffix) in [
        ("forks_url", "/forks"),
        ("keys_url", "/keys{/key_id}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("teams_url", "/teams"),
        ("hooks_url", "/hooks"),
        ("issue_events_url", "/issues/events{/number}"),
        ("events_url", "/events"),
        ("assignees_url", "/assignees{/user}"),
        ("branches_url", "/branches{/branch}"),
        ("tags_url", "/tags"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("trees_url", "/git/trees{/sha}"),
        ("statuses_url", "/statuses/{sha}"),
        ("languages_url", "/languages"),
        ("stargazers_url", "/stargazers"),
        ("contributors_url", "/contributors"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("commits_url", "/commits{/sha}"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("comments_url", "/comments{/number}"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("contents_url", "/contents/{+path}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("merges_url", "/merges"),
        ("archive_url", "/{archive_format}{/ref}"),
        ("downloads_url", "/downloads"),
        ("issues_url", "/issues{/number}"),
        ("pulls_url", "/pulls{/number}"),
        ("milestones_url", "/milestones{/number}"),
        (
            "notifications_url",
            "/notifications{?since,all,participating}",
        ),
        ("labels_url", "/labels{/name}"),
        ("releases_url", "/releases{/id}"),
        ("deployments_url", "/deployments"),
    ] {
        put(key, Value::from(format!("{api}{suffix}")));
    }
    let created = timestamp(chrono::DateTime::UNIX_EPOCH);
    put("created_at", Value::from(created.clone()));
    put("updated_at", Value::from(created.clone()));
    put("pushed_at", Value::from(created));
    put(
        "git_url",
        Value::from(format!("git://{host}/{owner}/{repo}.git")),
    );
    put(
        "ssh_url",
        Value::from(format!("git@{host}:{owner}/{repo}.git")),
    );
    put("clone_url", Value::from(format!("{html}.git")));
    put("svn_url", Value::from(html));
    put("homepage", Value::Null);
    for key in ["size", "stargazers_count", "watchers_count"] {
        put(key, Value::from(0));
    }
    put("language", Value::Null);
    for key in [
        "has_issues",
        "has_projects",
        "has_downloads",
        "has_wiki",
        "has_pages",
    ] {
        put(key, Value::from(true));
    }
    put("forks_count", Value::from(0));
    put("mirror_url", Value::Null);
    put("archived", Value::from(false));
    put("disabled", Value::from(false));
    put("open_issues_count", Value::from(0));
    put("license", Value::Null);
    for key in ["forks", "open_issues", "watchers"] {
        put(key, Value::from(0));
    }
    put("default_branch", Value::from("main"));
    put("is_template", Value::from(false));
    put("topics", json!([]));
    put("visibility", Value::from("public"));
    put("web_commit_signoff_required", Value::from(false));
    put("custom_properties", json!({}));
    Value::Object(r)
}

async fn deliver_in_order(shared: Arc<Shared>, mut queue: UnboundedReceiver<PendingDelivery>) {
    while let Some(delivery) = queue.recv().await {
        let record = deliver(&shared, &delivery).await;
        shared.world().record_delivery(record);
    }
}

async fn deliver(shared: &Shared, d: &PendingDelivery) -> DeliveryRecord {
    let mut record = DeliveryRecord {
        id: d.id.to_string(),
        event: "workflow_job",
        action: d.action,
        job_id: d.job_id,
        outcome: "no_target",
        attempts: 0,
        status_code: None,
    };
    let drop_share = shared.world().faults.drop_webhook_share;
    if drop_share > 0.0 && rand::random::<f64>() < drop_share {
        record.outcome = "dropped";
        tracing::debug!(
            job_id = d.job_id,
            action = d.action,
            "webhook dropped (fault knob)"
        );
        return record;
    }
    for attempt in 0..=RETRY_DELAYS.len() {
        // Read the target each time: it may be set or fixed while we retry.
        let Some(target) = shared.world().webhook_target.clone() else {
            return record;
        };
        record.attempts += 1;
        let signature = sign_payload(target.secret.expose_secret().as_bytes(), &d.body);
        let sent = shared
            .http
            .post(&target.url)
            .header("X-GitHub-Event", "workflow_job")
            .header("X-GitHub-Delivery", d.id.to_string())
            .header("X-GitHub-Hook-ID", "1")
            .header("X-GitHub-Hook-Installation-Target-Type", "repository")
            .header(SIGNATURE_HEADER, signature)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(d.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                record.outcome = "delivered";
                record.status_code = Some(response.status().as_u16());
                return record;
            }
            Ok(response) => {
                record.status_code = Some(response.status().as_u16());
                tracing::debug!(job_id = d.job_id, action = d.action, status = %response.status(), "webhook not accepted");
            }
            Err(error) => {
                record.status_code = None;
                tracing::debug!(job_id = d.job_id, action = d.action, error = %error.without_url(), "webhook delivery failed");
            }
        }
        record.outcome = "failed";
        if let Some(pause) = RETRY_DELAYS.get(attempt) {
            tokio::time::sleep(*pause).await;
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature_test_vector() {
        assert_eq!(
            sign_payload(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn host_is_taken_from_base() {
        assert_eq!(host_of("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(host_of("weird"), "weird");
    }
}
