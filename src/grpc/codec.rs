//! The protobuf codec of every generated service and client (`build.rs`
//! names it): prost's, except that a message that does not decode is the
//! sender's bad input, `INVALID_ARGUMENT` naming the field, where tonic's
//! codec answers `INTERNAL`. The common case is a `string` field that is not
//! UTF-8, which prost refuses while decoding, before any handler runs; this
//! is the one place that sees every such failure, unary and streamed alike.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

use super::status::to_status;
use crate::broker::{BrokerError, Violation};

/// prost's codec with [`Undecodable`] decoding errors.
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Undecodable<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Undecodable(PhantomData)
    }
}

/// Decodes `U`; a failure is `INVALID_ARGUMENT` with the field prost names.
pub struct Undecodable<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for Undecodable<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| to_status(BrokerError::Invalid(vec![violation(&e)])))
    }
}

/// The field and problem of a decoding error. prost keeps its field path
/// private but prints it, innermost first (pushed as the error bubbles up):
/// `failed to decode Protobuf message: Inner.field: Outer.field: description`;
/// the path becomes `field.field` outermost first, or `message` when prost
/// names none.
fn violation(e: &prost::DecodeError) -> Violation {
    let text = e.to_string();
    let mut rest = text.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&text);
    let mut path = Vec::new();
    while let Some((step, after)) = rest.split_once(": ") {
        let Some((message, field)) = step.split_once('.') else { break };
        let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !(ident(message) && ident(field)) {
            break;
        }
        path.push(field);
        rest = after;
    }
    path.reverse();
    let field = if path.is_empty() { "message".to_owned() } else { path.join(".") };
    Violation::new(field, format!("cannot be decoded: {rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn the_violation_names_the_field_path() {
        // EnqueueRequest { kind (2): 0xff } and EnqueueBatchRequest { tasks (1): that }.
        let bad_kind = [0x12, 0x01, 0xff];
        let e = pb::EnqueueRequest::decode(&bad_kind[..]).unwrap_err();
        let v = violation(&e);
        assert_eq!(v.field, "kind");
        assert!(v.description.contains("UTF-8"), "{}", v.description);
        let batch = [&[0x0a, bad_kind.len() as u8][..], &bad_kind].concat();
        let e = pb::EnqueueBatchRequest::decode(&batch[..]).unwrap_err();
        assert_eq!(violation(&e).field, "tasks.kind");
        let e = pb::EnqueueRequest::decode(&[0x12, 0x05, 0x61][..]).unwrap_err();
        assert_eq!(violation(&e).field, "kind", "truncated: {e}");
        let e = pb::EnqueueRequest::decode(&[0xff][..]).unwrap_err();
        assert_eq!(violation(&e).field, "message", "no field: {e}");
    }
}
