//! What a message's envelope gets, for every front end: its sender (a local sender held by
//! the sender watch), and once its recipients are known the check that needs no content (a
//! bounce goes to one recipient).
//!
//! Responsible for: those checks, their replies and what they record (count, log line,
//! dashboard).
//! Not responsible for: the verdict on a message's content (the bounce judge, in
//! `backscatter`), or where the message goes.

use super::Ladder;
use crate::backscatter::Stopped;
use crate::telemetry::{Client, Event};
use backstop_proto::address::ReversePath;
use backstop_proto::smtp::reply::{Enhanced, Reply};

impl Ladder {
    /// MAIL (Postfix: any state with a sender): a local sender that the sender watch holds
    /// gets `450 4.7.1` from a client that may relay. `None` to go on.
    pub async fn sender(&self, from: &ReversePath, may_relay: bool) -> Option<Reply> {
        let sender = from.mailbox().filter(|_| may_relay)?;
        let watch = self.watch.as_ref()?;
        match watch.held(sender, self.clock.unix()).await {
            Ok(None) => None,
            Ok(Some(hold)) => Some(Reply::new(
                450,
                Enhanced::new(4, 7, 1),
                format!(
                    "<{sender}>: sender held ({}); ask your mail administrator",
                    hold.why
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "sender hold not checked: store failed");
                Some(super::rcpt::store_trouble())
            }
        }
    }

    /// At DATA (Postfix: DATA or END-OF-MESSAGE): a bounce goes to one recipient; `count` of
    /// them (`rcpts`, as the log names them) from a client that may not relay is the shape of
    /// backscatter. The refusal, counted, logged and remembered; `None` to go on.
    pub async fn bounce_recipients(
        &self,
        (client, id): (Client<'_>, &str),
        from: &ReversePath,
        may_relay: bool,
        (count, rcpts): (usize, &str),
    ) -> Option<Reply> {
        if *from != ReversePath::Null || may_relay || count <= 1 {
            return None;
        }
        let (now, label) = (self.clock.unix(), "refused=rcpts>1");
        self.guard.count(&[label], now).await;
        let reply = Reply::new(
            550,
            Enhanced::new(5, 7, 1),
            "Error: a bounce has one recipient; this one has several",
        );
        Event::BounceRefused {
            client,
            id,
            rcpts,
            reasons: "rcpts>1",
            reply: &reply,
        }
        .emit();
        self.guard.stopped(Stopped {
            at: now,
            client: client.ip.to_string(),
            rcpt: rcpts.to_string(),
            reasons: label.into(),
            action: "refused",
        });
        Some(reply)
    }
}
