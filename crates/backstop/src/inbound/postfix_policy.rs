//! The Postfix policy service (`protocol = "policy"`): Postfix keeps its place at the edge and
//! asks backstop about each recipient (`check_policy_service`); backstop answers from the same
//! RCPT ladder as its own SMTP listener.
//!
//! Responsible for: one policy connection (requests answered in order, many per connection),
//! a request's attributes as the ladder's facts and its verdict as a Postfix action, what one
//! Postfix SMTP session accumulates across its requests (the unknown-recipient tally, the
//! outbound count of its message), and the envelope check at the end of a message.
//! Not responsible for: deciding (`decide`), the wire format (`proto::policy`), or the message
//! itself (Postfix queues and delivers it).

use super::Setup;
use crate::decide::{Facts, Reason, Tally};
use crate::policy::Outcome;
use crate::telemetry::{Answer, Client, Event};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::policy::{Reader, Request, answer};
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// What one policy connection remembers: Postfix's smtpd process behind it serves one SMTP
/// session at a time, told apart by the client's address and port.
#[derive(Default)]
struct Conn {
    session: (String, String),
    instance: String,
    tally: Tally,
}

/// Serves one connection from Postfix until it closes, sends what is not a request, stays
/// idle past `[limits] idle_timeout`, or the gateway stops (after the answer in progress).
pub async fn run(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: &str,
    setup: &Setup,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, mut conn) = (Reader::new(), Conn::default());
    let idle = setup.ctx.cfg.limits.idle_timeout;
    let mut buf = vec![0u8; 8192];
    loop {
        while let Some(next) = reader.next_request() {
            let req = match next {
                Ok(req) => req,
                Err(e) => {
                    // the protocol's answer to trouble: no reply, a warning, and the close
                    tracing::warn!(peer = %peer, error = %e, "policy request refused; closing");
                    return;
                }
            };
            let action = conn.answer(&req, setup).await;
            if stream.write_all(&answer(&action)).await.is_err() {
                return;
            }
        }
        let Some(n) = super::read_or_stop(&mut stream, &mut buf, idle, &mut shutdown).await else {
            return;
        };
        reader.push(&buf[..n]);
    }
}

impl Conn {
    /// The action for one request.
    async fn answer(&mut self, req: &Request, setup: &Setup) -> String {
        match req.value("protocol_state") {
            "MAIL" => self.mail(req, setup).await,
            "RCPT" => self.rcpt(req, setup).await,
            "DATA" | "END-OF-MESSAGE" => self.end_of_message(req, setup).await,
            // nothing to say about CONNECT, EHLO, MAIL, VRFY, ETRN: Postfix goes on
            _ => "DUNNO".into(),
        }
    }

    /// The client, sender and whether it may relay, as the request says; `None` when the
    /// request lacks what the checks need (then Postfix decides alone).
    fn envelope(&mut self, req: &Request, setup: &Setup) -> Option<(IpAddr, ReversePath, bool)> {
        let ip: IpAddr = req.value("client_address").parse().ok()?;
        let from = match req.value("sender") {
            "" => ReversePath::Null,
            s => ReversePath::Mailbox(Mailbox::parse(s, true).ok()?),
        };
        let may_relay = setup.config.may_relay(ip) || !req.value("sasl_username").is_empty();
        let session = (
            req.value("client_address").to_string(),
            req.value("client_port").to_string(),
        );
        if session != self.session {
            self.session = session;
            self.tally = setup.ctx.ladder.tally(ip, may_relay);
        }
        if req.value("instance") != self.instance {
            self.instance = req.value("instance").to_string();
            self.tally.counted_out = false;
        }
        Some((ip, from, may_relay))
    }

    /// A relay client's sender held by the sender watch: `450 4.7.1` (asked at MAIL when
    /// Postfix asks then, else at each RCPT).
    async fn mail(&mut self, req: &Request, setup: &Setup) -> String {
        let Some((_, from, may_relay)) = self.envelope(req, setup) else {
            return "DUNNO".into();
        };
        let held = setup.ctx.ladder.sender(&from, may_relay).await;
        held.map_or_else(|| "DUNNO".into(), |r| action(&r, from.mailbox()))
    }

    async fn rcpt(&mut self, req: &Request, setup: &Setup) -> String {
        let rcpt = Mailbox::parse(req.value("recipient"), true).ok();
        let (Some((ip, from, may_relay)), Some(rcpt)) = (self.envelope(req, setup), rcpt) else {
            tracing::info!(
                client = req.value("client_address"),
                sender = req.value("sender"),
                recipient = req.value("recipient"),
                "policy: request without a usable client, \
                sender or recipient; DUNNO"
            );
            return "DUNNO".into();
        };
        if let Some(held) = setup.ctx.ladder.sender(&from, may_relay).await {
            return action(&held, from.mailbox());
        }
        let facts = Facts {
            client: ip,
            from: Some(&from),
            rcpt: rcpt.clone(),
            may_relay,
            relaying: false,
            live: true,
        };
        let v = setup.ctx.ladder.rcpt(facts, &mut self.tally).await;
        // whether a domain is relayed at all is Postfix's decision (reject_unauth_destination)
        let not_ours = matches!(
            v.reason,
            Reason::Verified {
                outcome: Outcome::RelayDenied,
                ..
            }
        );
        let client = Client {
            ip,
            helo: req.value("helo_name"),
            tls: req.value("encryption_cipher"),
        };
        let result = if not_ours {
            Answer::Accepted
        } else {
            v.answer()
        };
        // what Postfix was told about a domain that is not ours: nothing (DUNNO)
        let dunno = backstop_proto::smtp::reply::Reply::plain(
            250,
            "DUNNO (not one of our domains: Postfix decides)",
        );
        Event::Rcpt {
            client,
            id: req.value("queue_id"),
            from: &from,
            rcpt: &v.rcpt,
            reply: if not_ours { &dunno } else { &v.reply },
            result,
            reason: if not_ours {
                "not-ours"
            } else {
                v.reason.label()
            },
            frontend: "policy",
        }
        .emit();
        match v.reply.is_success() || not_ours {
            true => "DUNNO".into(),
            false => action(&v.reply, Some(&rcpt)),
        }
    }

    async fn end_of_message(&mut self, req: &Request, setup: &Setup) -> String {
        let Some((ip, from, may_relay)) = self.envelope(req, setup) else {
            return "DUNNO".into();
        };
        let count: usize = req.value("recipient_count").parse().unwrap_or(0);
        let client = Client {
            ip,
            helo: req.value("helo_name"),
            tls: req.value("encryption_cipher"),
        };
        let rcpts = format!("{count} recipients");
        let refused = setup
            .ctx
            .ladder
            .bounce_recipients(
                (client, req.value("queue_id")),
                &from,
                may_relay,
                (count, &rcpts),
            )
            .await;
        refused.map_or_else(|| "DUNNO".into(), |r| action(&r, None))
    }
}

/// A refusal as a Postfix action. Postfix puts `<ADDRESS>: Recipient address rejected: ` (or
/// `<END-OF-MESSAGE>: End-of-data rejected: `) before an action's text itself, so what our
/// reply says in those words (`<about>: `, then the same phrase) is left out: the client reads
/// the same reply as from backstop's own listener.
fn action(reply: &backstop_proto::smtp::reply::Reply, about: Option<&Mailbox>) -> String {
    let full = reply.text();
    let mut text = full.as_str();
    if let Some(addr) = about {
        text = text.strip_prefix(&format!("<{addr}>: ")).unwrap_or(text);
    }
    for said in ["Recipient address rejected: ", "Error: "] {
        text = text.strip_prefix(said).unwrap_or(text);
    }
    match reply.enhanced {
        Some(e) => format!("{} {e} {text}", reply.code),
        None => format!("{} {text}", reply.code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_proto::smtp::reply::{Enhanced, Reply};

    #[test]
    fn an_action_leaves_out_what_postfix_says_itself() {
        let r = |text: String| Reply::new(550, Enhanced::new(5, 1, 1), text);
        let plain = Mailbox::parse("nobody@example.test", true).unwrap();
        let reply = r(format!(
            "<{plain}>: Recipient address rejected: User unknown"
        ));
        assert_eq!(action(&reply, Some(&plain)), "550 5.1.1 User unknown");
        // the address's own '>: ' is not where our text begins
        let odd = Mailbox::parse("\"a>: b\"@example.test", true).unwrap();
        let reply = r(format!(
            "<{odd}>: bounce not for mail sent from here (no BATV tag)"
        ));
        assert_eq!(
            action(&reply, Some(&odd)),
            "550 5.1.1 bounce not for mail sent from here (no BATV tag)"
        );
        let eom = r("Error: a bounce has one recipient; this one has several".into());
        assert_eq!(
            action(&eom, None),
            "550 5.1.1 a bounce has one recipient; this one has several"
        );
    }
}
