//! The milter front end (`protocol = "milter"`): Postfix (or Sendmail) keeps its place at the
//! edge and shows backstop each message at its end; backstop answers with the bounce checks of
//! its own listener.
//!
//! Responsible for: one milter connection (driving `proto::milter::session`), and what a
//! finished message gets. Mail a relay client sends out is recorded in the sent log and its
//! sender BATV-signed (change-from). A bounce from outside the relay networks has its
//! recipients' BATV tags checked (a bad one refuses the message; a good one is replaced by the
//! address without it) and the bounce judge's verdict carried out with the milter's means (a
//! reply, Postfix's hold queue, or a header). Not responsible for: deciding (`decide`), the wire format
//! (`proto::milter`), or the message itself (the MTA queues and delivers it).

use super::Setup;
use crate::decide::Facts;
use crate::decide::message::{Judged, Judging};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::milter::session::{Config, Message, Output, Session};
use backstop_proto::milter::{Response, actions};
use std::net::{IpAddr, Ipv4Addr};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Serves one connection from the MTA until it quits, sends what is not the protocol, stays
/// idle past `[limits] idle_timeout`, or the gateway stops.
pub async fn run(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: &str,
    setup: &Setup,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = Config {
        actions: actions::ADD_HEADERS
            | actions::ADD_RCPT
            | actions::DELETE_RCPT
            | actions::QUARANTINE,
        keep: usize::try_from(setup.ctx.cfg.limits.message_in_memory).unwrap_or(usize::MAX),
    };
    let mut session = Session::new(cfg);
    let idle = setup.ctx.cfg.limits.idle_timeout;
    let mut buf = vec![0u8; 65536];
    let mut outputs = std::collections::VecDeque::new();
    loop {
        while let Some(o) = outputs.pop_front() {
            match o {
                Output::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Output::EndOfMessage(m) => {
                    let answer = answer(&m, setup).await;
                    outputs.extend(session.resolve(answer));
                }
                Output::Close(why) => {
                    if let Some(e) = why {
                        tracing::warn!(peer = %peer, error = %e, "milter input refused; closing");
                    }
                    return;
                }
            }
        }
        let Some(n) = super::read_or_stop(&mut stream, &mut buf, idle, &mut shutdown).await else {
            return;
        };
        outputs.extend(session.handle_input(&buf[..n]));
    }
}

/// An address as the MTA gives it (`<a@b>`, or `<>`).
fn path(arg: Option<&String>) -> Option<ReversePath> {
    let a = arg?.trim();
    let inner = a
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a);
    match inner {
        "" => Some(ReversePath::Null),
        m => Mailbox::parse(m, true).ok().map(ReversePath::Mailbox),
    }
}

/// What a finished message gets: modifications, then the verdict.
async fn answer(m: &Message, setup: &Setup) -> Vec<Response> {
    let ladder = &setup.ctx.ladder;
    let client: IpAddr = m
        .client
        .address
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let may_relay = setup.config.may_relay(client)
        || m.macro_value("{auth_authen}")
            .is_some_and(|a| !a.is_empty());
    let Some(from) = path(m.from.first()) else {
        return vec![Response::Continue];
    };
    let mut out = Vec::new();
    let (mut rcpts, mut batv) = (Vec::new(), None);
    for args in &m.rcpts {
        let Some(ReversePath::Mailbox(given)) = path(args.first()) else {
            continue;
        };
        let facts = Facts {
            client,
            from: Some(&from),
            rcpt: given.clone(),
            may_relay,
            relaying: false,
            live: true,
        };
        match ladder.batv(&facts).await {
            Ok((address, evidence, _)) => {
                if address != given {
                    out.push(Response::DeleteRcpt(format!("<{given}>")));
                    out.push(Response::AddRcpt(format!("<{address}>")));
                }
                batv = batv.max(evidence);
                rcpts.push(address);
            }
            Err(refused) => return vec![Response::ReplyCode(refused.reply.to_string())],
        }
    }
    let id = m.macro_value("i").unwrap_or("");
    if may_relay {
        // ours: recorded and signed when it leaves, never judged as a bounce
        if let Some(signed) = ladder.outgoing((id, &m.head), &from, &rcpts).await {
            let args = m.from.get(1..).unwrap_or_default().join(" ");
            let args = (!args.is_empty()).then_some(args);
            out.push(Response::ChangeFrom(format!("<{signed}>"), args));
        }
        out.push(Response::Continue);
        return out;
    }
    let judging = Judging {
        client,
        id,
        from: &from,
        rcpts: &rcpts,
        batv,
        head: &m.head,
        may_relay,
    };
    match ladder.judge(judging).await {
        Judged::Deliver(None) => {}
        Judged::Deliver(Some(header)) => {
            let (name, value) = header
                .trim_end()
                .split_once(": ")
                .unwrap_or(("X-Backstop-Bounce", ""));
            out.push(Response::AddHeader(name.into(), value.into()));
        }
        Judged::Answer(reply, _) => return vec![Response::ReplyCode(reply.to_string())],
        Judged::Quarantine(reasons) => {
            out.push(Response::Quarantine(format!(
                "backstop: backscatter ({reasons})"
            )));
        }
    }
    out.push(Response::Continue);
    out
}
