//! In-session relay: the next hop's transaction runs alongside the client's. Each recipient is
//! given to the next hop before the client hears our answer, and the message's final answer is
//! the next hop's, so nothing is accepted that the internal server refuses.

use crate::content::Content;
use crate::upstream::{Pool, Pooled, UpstreamError};
use backstop_proto::address::{ForwardPath, Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, RcptParams};
use backstop_proto::smtp::reply::{Enhanced, Reply, ReplyClass};
use std::sync::Arc;

/// A refusal: the reply the client gets (our words) and what happened (for the log).
#[derive(Debug)]
pub struct Refusal {
    /// Our reply to the client.
    pub reply: Reply,
    /// The next hop's reply or the connection error, for the operator.
    pub detail: String,
    /// The next hop answered (a reply); false when it could not be reached or the connection
    /// was lost.
    pub answered: bool,
    /// The next hop's own reply to this recipient's RCPT, when that is what refused it.
    pub said: Option<Reply>,
}

/// One relayed transaction on one pooled connection.
pub struct InSession {
    pool: Arc<Pool>,
    conn: Option<Pooled>,
    mail_sent: bool,
    broken: bool,
}

impl InSession {
    /// A transaction to the next hop behind `pool`; connects at the first recipient.
    pub fn new(pool: Arc<Pool>) -> InSession {
        InSession {
            pool,
            conn: None,
            mail_sent: false,
            broken: false,
        }
    }

    /// Gives one recipient to the next hop (sending MAIL FROM first if not yet done).
    pub async fn rcpt(
        &mut self,
        from: &ReversePath,
        mail: &MailParams,
        to: &Mailbox,
        params: &RcptParams,
    ) -> Result<String, Refusal> {
        if self.broken {
            return Err(lost(
                Some(to),
                "connection to the next hop was lost earlier in this transaction".into(),
            ));
        }
        // a kept connection may have been closed by the server meanwhile: while nothing has been
        // sent on it for this transaction, one retry on a fresh connection is safe
        let mut fresh = false;
        loop {
            match self.try_rcpt(fresh, from, mail, to, params).await {
                Ok(r) => return Ok(r),
                Err(Failure::Refused(r)) => return Err(r),
                Err(Failure::Io(e)) => {
                    let retry =
                        !fresh && !self.mail_sent && self.conn.as_ref().is_some_and(|c| c.reused);
                    self.conn = None;
                    if retry {
                        fresh = true;
                        continue;
                    }
                    self.broken = self.mail_sent;
                    return Err(unreachable(to, e.to_string()));
                }
            }
        }
    }

    async fn try_rcpt(
        &mut self,
        fresh: bool,
        from: &ReversePath,
        mail: &MailParams,
        to: &Mailbox,
        params: &RcptParams,
    ) -> Result<String, Failure> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.get(fresh).await.map_err(Failure::Io)?);
        }
        let p = self.conn.as_mut().expect("connection set above");
        let pipelining = p.conn.capabilities().pipelining;
        let first = !self.mail_sent;
        if first {
            p.conn.client().mail(from, mail);
            if !pipelining {
                let r = p.conn.reply().await.map_err(Failure::Io)?;
                count_refusal(p, &r);
                if !r.is_success() {
                    return Err(Failure::Refused(refused(Stage::Mail, &r, Some(to))));
                }
            }
        }
        p.conn
            .client()
            .rcpt(&ForwardPath::Mailbox(to.clone()), params);
        if first && pipelining {
            let m = p.conn.reply().await.map_err(Failure::Io)?;
            let r = p.conn.reply().await.map_err(Failure::Io)?;
            count_refusal(p, &m);
            if !m.is_success() {
                return Err(Failure::Refused(refused(Stage::Mail, &m, Some(to))));
            }
            self.mail_sent = true;
            count_refusal(p, &r);
            return check(Stage::Rcpt, &r, to);
        }
        self.mail_sent = true;
        let r = p.conn.reply().await.map_err(Failure::Io)?;
        count_refusal(p, &r);
        check(Stage::Rcpt, &r, to)
    }

    /// Sends the message (our trace header first) and returns the next hop's final answer on
    /// success. The connection goes back to the pool when it is clean.
    pub async fn message(mut self, message: &Content) -> Result<String, Refusal> {
        let (Some(mut p), true, false) = (self.conn.take(), self.mail_sent, self.broken) else {
            return Err(lost(None, "no open transaction at the next hop".into()));
        };
        match send_message(&mut p, message).await {
            Ok(r) => {
                self.pool.put(p);
                Ok(r)
            }
            Err(Failure::Refused(r)) => {
                recycle(self.pool.clone(), p);
                Err(r)
            }
            Err(Failure::Io(e)) => Err(lost(None, e.to_string())),
        }
    }

    /// Permanent refusals on the connection this transaction runs on (0 before it has one).
    pub fn refusals(&self) -> u32 {
        self.conn.as_ref().map_or(0, |p| p.conn.refusals)
    }

    /// Ends the transaction without a message: RSET in the background, and the connection
    /// back to the pool if that works.
    pub fn abort(mut self) {
        if let Some(p) = self.conn.take() {
            recycle(self.pool.clone(), p);
        }
    }
}

/// RSET in the background; the connection goes back to the pool if the server agrees.
fn recycle(pool: Arc<Pool>, mut p: Pooled) {
    tokio::spawn(async move {
        p.conn.client().rset();
        if p.conn.reply().await.is_ok_and(|r| r.is_success()) {
            pool.put(p);
        }
    });
}

async fn send_message(p: &mut Pooled, message: &Content) -> Result<String, Failure> {
    p.conn.client().data();
    let r = p.conn.reply().await.map_err(Failure::Io)?;
    if r.code != 354 {
        return Err(Failure::Refused(refused(Stage::Message, &r, None)));
    }
    p.conn.send_message(message).await.map_err(Failure::Io)?;
    let r = p.conn.reply().await.map_err(Failure::Io)?;
    p.conn.transactions += 1;
    if r.is_success() {
        Ok(r.to_string())
    } else {
        Err(Failure::Refused(refused(Stage::Message, &r, None)))
    }
}

enum Failure {
    Io(UpstreamError),
    Refused(Refusal),
}

/// A permanent refusal counts against the connection (see [`crate::upstream::MAX_REFUSALS`]).
fn count_refusal(p: &mut Pooled, r: &Reply) {
    if r.class() == ReplyClass::Permanent {
        p.conn.refusals += 1;
    }
}

fn check(stage: Stage, r: &Reply, to: &Mailbox) -> Result<String, Failure> {
    if r.is_success() {
        return Ok(r.to_string());
    }
    let mut refusal = refused(stage, r, Some(to));
    if matches!(stage, Stage::Rcpt) {
        refusal.said = Some(r.clone());
    }
    Err(Failure::Refused(refusal))
}

#[derive(Clone, Copy)]
enum Stage {
    Mail,
    Rcpt,
    Message,
}

/// Our reply for a next-hop refusal: its code and enhanced status, our own fixed text.
fn refused(stage: Stage, r: &Reply, to: Option<&Mailbox>) -> Refusal {
    let temporary = r.class() != ReplyClass::Permanent;
    let (code, class) = match r.class() {
        ReplyClass::Permanent => (r.code, 5),
        // a 2xx/3xx where it makes no sense is a temporary failure
        ReplyClass::Transient => (r.code, 4),
        ReplyClass::Success | ReplyClass::Intermediate => (451, 4),
    };
    let enhanced = r
        .enhanced
        .filter(|e| e.class == class)
        .unwrap_or(Enhanced::new(class, 0, 0));
    let who = to.map(|m| format!("<{m}>: ")).unwrap_or_default();
    let text = match (stage, temporary) {
        (Stage::Rcpt, false) if enhanced.subject == 1 => {
            "Recipient address rejected: User unknown".to_string()
        }
        (Stage::Rcpt, false) => "Recipient address rejected by internal server".to_string(),
        (Stage::Rcpt, true) => {
            "Recipient address temporarily rejected by internal server, try again later".into()
        }
        (Stage::Mail, false) => "Sender address rejected by internal server".into(),
        (Stage::Mail, true) => {
            "Sender address temporarily rejected by internal server, try again later".into()
        }
        (Stage::Message, false) => "Error: message rejected by internal server".into(),
        (Stage::Message, true) => {
            "Error: internal server could not take the message, try again later".into()
        }
    };
    let (code, enhanced) = match (stage, temporary, enhanced.subject) {
        (Stage::Rcpt, false, 1) => (550, Enhanced::new(5, 1, 1)),
        _ => (code, enhanced),
    };
    Refusal {
        reply: Reply::new(code, enhanced, format!("{who}{text}")),
        detail: r.to_string(),
        answered: true,
        said: None,
    }
}

fn unreachable(to: &Mailbox, detail: String) -> Refusal {
    Refusal {
        reply: Reply::new(
            451,
            Enhanced::new(4, 4, 1),
            format!(
                "<{to}>: Recipient address rejected: internal server unreachable, try again later"
            ),
        ),
        detail,
        answered: false,
        said: None,
    }
}

fn lost(to: Option<&Mailbox>, detail: String) -> Refusal {
    let who = to.map(|m| format!("<{m}>: ")).unwrap_or_default();
    Refusal {
        reply: Reply::new(
            451,
            Enhanced::new(4, 4, 2),
            format!("{who}Error: connection to internal server lost, try again later"),
        ),
        detail,
        answered: false,
        said: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb() -> Mailbox {
        Mailbox::parse("u@example.test", false).unwrap()
    }

    #[test]
    fn next_hop_words_never_reach_the_client() {
        let upstream = Reply::new(
            550,
            Enhanced::new(5, 1, 1),
            "<u@example.test>: Recipient address rejected: User unknown in relay recipient table (internal.host.test)",
        );
        let r = refused(Stage::Rcpt, &upstream, Some(&mb()));
        assert_eq!(
            r.reply.to_string(),
            "550 5.1.1 <u@example.test>: Recipient address rejected: User unknown"
        );
        assert!(r.detail.contains("internal.host.test"));
        let r = refused(
            Stage::Rcpt,
            &Reply::new(554, Enhanced::new(5, 7, 1), "secret policy"),
            Some(&mb()),
        );
        assert_eq!(
            r.reply.to_string(),
            "554 5.7.1 <u@example.test>: Recipient address rejected by internal server"
        );
        let r = refused(
            Stage::Message,
            &Reply::plain(452, "disk full on host7"),
            None,
        );
        assert_eq!(
            r.reply.to_string(),
            "452 4.0.0 Error: internal server could not take the message, try again later"
        );
        let r = refused(Stage::Message, &Reply::plain(250, "odd"), None);
        assert_eq!(r.reply.code, 451);
    }
}
