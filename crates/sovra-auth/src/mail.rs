//! Mail and SMS: templates, and the senders that deliver them.
//!
//! With no SMTP server configured, every message lands in a local mailbox
//! (`<data_dir>/mailbox/*.json`, mode 0600) that `sovra mail` and
//! `GET /auth/v1/admin/mailbox` read, so a sign-up can be finished with no
//! mail server. Text messages (phone sign-in) use the same mailbox unless a
//! real SMS sender is plugged in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lettre::AsyncTransport as _;
use serde::{Deserialize, Serialize};

/// The messages Auth sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Confirmation,
    Invite,
    MagicLink,
    Recovery,
    EmailChange,
    Reauthentication,
    Sms,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Confirmation,
        Kind::Invite,
        Kind::MagicLink,
        Kind::Recovery,
        Kind::EmailChange,
        Kind::Reauthentication,
        Kind::Sms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Confirmation => "confirmation",
            Kind::Invite => "invite",
            Kind::MagicLink => "magic_link",
            Kind::Recovery => "recovery",
            Kind::EmailChange => "email_change",
            Kind::Reauthentication => "reauthentication",
            Kind::Sms => "sms",
        }
    }

    fn default_template(self) -> (&'static str, &'static str) {
        match self {
            Kind::Confirmation => (
                "Confirm your signup",
                "Follow this link to confirm your account:\n\n{{ .ConfirmationURL }}\n\nOr enter this code: {{ .Token }}\n",
            ),
            Kind::Invite => (
                "You have been invited",
                "You have been invited to create an account on {{ .SiteURL }}. Follow this link to accept the invite:\n\n{{ .ConfirmationURL }}\n",
            ),
            Kind::MagicLink => (
                "Your sign-in link",
                "Follow this link to sign in:\n\n{{ .ConfirmationURL }}\n\nOr enter this code: {{ .Token }}\n",
            ),
            Kind::Recovery => (
                "Reset your password",
                "Follow this link to reset the password for your account:\n\n{{ .ConfirmationURL }}\n\nOr enter this code: {{ .Token }}\n",
            ),
            Kind::EmailChange => (
                "Confirm your new email address",
                "Follow this link to confirm the change of email from {{ .Email }} to {{ .NewEmail }}:\n\n{{ .ConfirmationURL }}\n\nOr enter this code: {{ .Token }}\n",
            ),
            Kind::Reauthentication => (
                "Confirm reauthentication",
                "Enter this code to confirm it is you: {{ .Token }}\n",
            ),
            Kind::Sms => ("", "Your code is {{ .Token }}"),
        }
    }
}

/// Subject and body with `{{ .Name }}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

/// Values for the placeholders.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub confirmation_url: String,
    pub token: String,
    pub token_hash: String,
    pub site_url: String,
    pub email: String,
    pub new_email: String,
    pub redirect_to: String,
}

impl Template {
    pub fn render(&self, vars: &Vars) -> (String, String) {
        let fill = |text: &str| {
            let mut out = text.to_owned();
            for (name, value) in [
                ("ConfirmationURL", &vars.confirmation_url),
                ("TokenHash", &vars.token_hash),
                ("Token", &vars.token),
                ("SiteURL", &vars.site_url),
                ("NewEmail", &vars.new_email),
                ("Email", &vars.email),
                ("RedirectTo", &vars.redirect_to),
            ] {
                out = out
                    .replace(&format!("{{{{ .{name} }}}}"), value)
                    .replace(&format!("{{{{.{name}}}}}"), value);
            }
            out
        };
        (fill(&self.subject), fill(&self.body))
    }
}

/// Every template: the built-in ones, replaced by `<dir>/<kind>.txt` files
/// whose first line may be `Subject: …`.
pub fn load_templates(dir: Option<&Path>) -> Result<BTreeMap<Kind, Template>, String> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        let (subject, body) = kind.default_template();
        let mut template = Template {
            subject: subject.to_owned(),
            body: body.to_owned(),
        };
        if let Some(dir) = dir {
            let path = dir.join(format!("{}.txt", kind.name()));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    template = match text.split_once('\n') {
                        Some((first, rest)) if first.starts_with("Subject:") => Template {
                            subject: first.trim_start_matches("Subject:").trim().to_owned(),
                            body: rest.trim_start_matches('\n').to_owned(),
                        },
                        _ => Template {
                            subject: template.subject,
                            body: text,
                        },
                    };
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(format!("{}: {err}", path.display())),
            }
        }
        out.insert(kind, template);
    }
    Ok(out)
}

/// A message as the mailbox keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub id: String,
    pub kind: Kind,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Unix seconds.
    pub sent_at: i64,
}

/// A rendered message waiting to be sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: Kind,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// The send-email or send-SMS hook's input, when that hook is on: the
    /// hook is called instead of the sender.
    pub hook: Option<(crate::hooks::HookName, serde_json::Value)>,
}

tokio::task_local! {
    /// The messages a request has produced, sent once its work committed.
    static OUTBOX: std::cell::RefCell<Vec<Outgoing>>;
}

/// Queues `message` in the current request's outbox, or hands it back when
/// there is no request (it is then sent at once).
pub(crate) fn queue(message: Outgoing) -> Option<Outgoing> {
    let mut message = Some(message);
    let queued = OUTBOX.try_with(|outbox| {
        if let Some(m) = message.take() {
            outbox.borrow_mut().push(m);
        }
    });
    match queued {
        Ok(()) => None,
        Err(_) => message,
    }
}

/// Runs `work` with an outbox; returns its output and the queued messages.
pub(crate) async fn with_outbox<T>(
    work: impl std::future::Future<Output = T>,
) -> (T, Vec<Outgoing>) {
    OUTBOX
        .scope(std::cell::RefCell::new(Vec::new()), async move {
            let out = work.await;
            let queued = OUTBOX.with(|outbox| std::mem::take(&mut *outbox.borrow_mut()));
            (out, queued)
        })
        .await
}

/// Where messages go.
#[derive(Clone)]
pub enum Sender {
    Mailbox(PathBuf),
    Smtp {
        transport: Box<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
        from: lettre::message::Mailbox,
        /// Text messages still go to this mailbox.
        mailbox: PathBuf,
    },
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Mailbox(dir) => write!(f, "Mailbox({})", dir.display()),
            Sender::Smtp { from, .. } => write!(f, "Smtp(from {from})"),
        }
    }
}

impl Sender {
    /// SMTP when `smtp_url` is set (`smtp://user:pass@host:587` with
    /// STARTTLS, `smtps://…:465` with TLS), else the mailbox in `mailbox`.
    pub fn new(smtp_url: Option<&str>, from: &str, mailbox: PathBuf) -> Result<Sender, String> {
        let Some(url) = smtp_url else {
            return Ok(Sender::Mailbox(mailbox));
        };
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .map_err(|err| format!("invalid SMTP URL: {err}"))?
            .build();
        let from = from
            .parse()
            .map_err(|err| format!("invalid sender address {from:?}: {err}"))?;
        Ok(Sender::Smtp {
            transport: Box::new(transport),
            from,
            mailbox,
        })
    }

    /// Delivers one message.
    pub async fn send(
        &self,
        kind: Kind,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), String> {
        match self {
            Sender::Smtp {
                transport, from, ..
            } if kind != Kind::Sms => {
                let message = lettre::Message::builder()
                    .from(from.clone())
                    .to(to.parse().map_err(|err| format!("bad address: {err}"))?)
                    .subject(subject)
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    .body(body.to_owned())
                    .map_err(|err| err.to_string())?;
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|err| err.to_string())
            }
            Sender::Smtp { mailbox, .. } | Sender::Mailbox(mailbox) => {
                let message = Message {
                    id: uuid::Uuid::new_v4().to_string(),
                    kind,
                    to: to.to_owned(),
                    subject: subject.to_owned(),
                    body: body.to_owned(),
                    sent_at: crate::time::now_unix(),
                };
                let dir = mailbox.clone();
                tokio::task::spawn_blocking(move || write_message(&dir, &message))
                    .await
                    .map_err(|err| err.to_string())?
                    .map_err(|err| err.to_string())
            }
        }
    }
}

fn write_message(dir: &Path, message: &Message) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("{nanos:024}-{}.json", message.id));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&serde_json::to_vec_pretty(message).map_err(std::io::Error::other)?)?;
    file.sync_all()
}

/// The mailbox's messages, oldest first; `to` filters by recipient.
pub fn read_mailbox(dir: &Path, to: Option<&str>) -> std::io::Result<Vec<Message>> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(message) = serde_json::from_slice::<Message>(&bytes) else {
            continue;
        };
        if to.is_none_or(|to| message.to.eq_ignore_ascii_case(to)) {
            out.push(message);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mailbox_round_trip_and_templates() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("templates");
        std::fs::create_dir(&custom).unwrap();
        std::fs::write(
            custom.join("recovery.txt"),
            "Subject: Reset for {{ .Email }}\nCode {{.Token}} at {{ .ConfirmationURL }}",
        )
        .unwrap();
        let templates = load_templates(Some(&custom)).unwrap();
        let vars = Vars {
            token: "123456".into(),
            email: "a@b.c".into(),
            confirmation_url: "http://x/verify".into(),
            ..Vars::default()
        };
        let (subject, body) = templates[&Kind::Recovery].render(&vars);
        assert_eq!(subject, "Reset for a@b.c");
        assert_eq!(body, "Code 123456 at http://x/verify");
        let (_, body) = templates[&Kind::Confirmation].render(&vars);
        assert!(body.contains("http://x/verify") && body.contains("123456"));

        let mailbox = dir.path().join("mailbox");
        let sender = Sender::new(None, "", mailbox.clone()).unwrap();
        sender
            .send(Kind::Recovery, "a@b.c", &subject, &body)
            .await
            .unwrap();
        sender
            .send(Kind::Sms, "15550001", "", "code")
            .await
            .unwrap();
        let all = read_mailbox(&mailbox, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].kind, Kind::Recovery);
        let to = read_mailbox(&mailbox, Some("A@B.C")).unwrap();
        assert_eq!(to.len(), 1);
        assert!(
            read_mailbox(&dir.path().join("none"), None)
                .unwrap()
                .is_empty()
        );
        assert!(Sender::new(Some("notaurl"), "x@y.z", mailbox).is_err());
    }
}
