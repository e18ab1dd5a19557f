//! The protobuf codec of the stategate services: prost's, except that a
//! request that does not decode (malformed bytes, nesting past prost's
//! recursion limit) is the client's fault, `INVALID_ARGUMENT`, where tonic
//! would answer `INTERNAL`.

use crate::hub::SharedEvent;
use crate::proto as pb;
use bytes::BufMut;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|s| Status::invalid_argument(format!("malformed message: {}", s.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The codec of `EventService/Stream` (see `grpc::DirectRoutes`): requests
/// decode strictly as everywhere else; responses are shared events whose
/// protobuf encoding is made once and copied to every stream sending them.
#[derive(Default)]
pub struct SharedEventCodec;

impl Codec for SharedEventCodec {
    type Encode = SharedEvent;
    type Decode = pb::StreamOpts;
    type Encoder = SharedEventEncoder;
    type Decoder = StrictDecoder<pb::StreamOpts>;

    fn encoder(&mut self) -> Self::Encoder {
        SharedEventEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstCodec::<pb::Event, pb::StreamOpts>::default().decoder())
    }
}

pub struct SharedEventEncoder;

/// `Event.resume_after`'s field number.
const RESUME_AFTER_FIELD: u32 = 9;

impl Encoder for SharedEventEncoder {
    type Item = SharedEvent;
    type Error = Status;

    fn encode(&mut self, item: SharedEvent, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let bytes = item.encoded(|e| super::encode::event_to_vec(e).into());
        dst.put_slice(&bytes);
        // A field appended to an encoded message is read as part of it, so
        // the shared bytes stay shared and each stream adds its own.
        if let Some(resume) = item.resume_after {
            prost::encoding::int64::encode(RESUME_AFTER_FIELD, &(resume as i64), dst);
        }
        Ok(())
    }
}
