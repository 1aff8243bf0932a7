//! A call with its type erased, in a box that carries the call to the
//! callee and its answer back, and is then reused by the next call of the
//! same type.
//!
//! Why: one channel carries every feature's calls, so a call loses its
//! type on the way, and the simple way to erase a type is a box. A box per
//! call plus another for its answer were two of a hop's five allocations.
//! Here the callee writes the answer into the box the call came in
//! ([`Envelope::serve`]), the box travels back, the caller takes the answer
//! out ([`Envelopes::unseal`]) and keeps the empty box in a per-type free
//! list for its next call of that type ([`Envelopes::seal`]). On the steady
//! path a hop allocates no box.
//!
//! Invariant: an envelope sent as a call of type `R` comes back holding
//! `Result<R::Answer, ApiError>`: only `Sealed<C, R>` implements the trait
//! for `R`, and its every path out of [`Envelope::serve`] and
//! [`Envelope::fail`] stores an answer. The caller downcasts to exactly the
//! type it sealed, so the "other type" arm is unreachable; it still answers
//! a typed 500 rather than panicking.

use super::{Rpc, Served};
use crate::error::ApiError;
use futures::future::LocalBoxFuture;
use rustc_hash::FxHashMap;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

/// A call, then its answer, behind one box.
pub(super) trait Envelope<C>: Send {
    /// [`Rpc::SPAWN`] of the call inside.
    fn spawn(&self) -> bool;
    /// Runs the call on the callee and leaves its answer inside.
    fn serve(self: Box<Self>, ctx: &Rc<C>) -> Opened<C>;
    /// Answers `e` instead of serving (the caller gave up, or a test fault).
    fn fail(&mut self, e: ApiError);
    /// Drops what it holds (a reply nobody waits for), keeping the box.
    fn clear(&mut self);
    /// The box as `Any`, to be downcast to its concrete type.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// An envelope in its box, as it travels.
pub(super) type Boxed<C> = Box<dyn Envelope<C>>;

/// A served envelope: answered now, or once the future completes.
pub(super) enum Opened<C> {
    Now(Boxed<C>),
    Later(LocalBoxFuture<'static, Boxed<C>>),
}

enum Stage<R, A> {
    Empty,
    Call(R),
    Answer(Result<A, ApiError>),
}

/// The one implementation of [`Envelope`]: a call of type `R` on context
/// `C`, or its answer.
struct Sealed<C, R: Rpc<C>> {
    stage: Stage<R, R::Answer>,
    /// `fn() -> C`: the envelope is `Send` whatever `C` is (it never holds
    /// a `C`).
    _ctx: PhantomData<fn() -> C>,
}

impl<C: 'static, R: Rpc<C>> Envelope<C> for Sealed<C, R> {
    fn spawn(&self) -> bool {
        R::SPAWN
    }

    fn serve(mut self: Box<Self>, ctx: &Rc<C>) -> Opened<C> {
        let call = match std::mem::replace(&mut self.stage, Stage::Empty) {
            Stage::Call(call) => call,
            _ => {
                self.stage = Stage::Answer(Err(ApiError::Internal("mesh envelope without a call")));
                return Opened::Now(self);
            }
        };
        match call.serve(ctx) {
            Served::Now(answer) => {
                self.stage = Stage::Answer(answer);
                Opened::Now(self)
            }
            Served::Later(wait) => Opened::Later(Box::pin(async move {
                self.stage = Stage::Answer(wait.await);
                self as Boxed<C>
            })),
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.stage = Stage::Answer(Err(e));
    }

    fn clear(&mut self) {
        self.stage = Stage::Empty;
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Empty boxes kept per type beyond which returned ones are freed: the
/// pool is as large as the most calls of one type in flight at once, up to
/// this.
const MAX_FREE_PER_TYPE: usize = 4096;

/// One core's free envelopes, by concrete type.
#[derive(Default)]
pub(super) struct Envelopes {
    free: RefCell<FxHashMap<TypeId, Vec<Box<dyn Any>>>>,
}

impl Envelopes {
    /// `call` in an envelope: a reused one of its type if one is free.
    pub(super) fn seal<C: 'static, R: Rpc<C>>(&self, call: R) -> Boxed<C> {
        let reused = self
            .free
            .borrow_mut()
            .get_mut(&TypeId::of::<Sealed<C, R>>())
            .and_then(Vec::pop)
            .and_then(|b| b.downcast::<Sealed<C, R>>().ok());
        match reused {
            Some(mut envelope) => {
                envelope.stage = Stage::Call(call);
                envelope
            }
            None => Box::new(Sealed::<C, R> {
                stage: Stage::Call(call),
                _ctx: PhantomData,
            }),
        }
    }

    /// The answer in an envelope that was sealed with a call of type `R`;
    /// the emptied box goes back to the free list.
    pub(super) fn unseal<C: 'static, R: Rpc<C>>(
        &self,
        envelope: Boxed<C>,
    ) -> Result<R::Answer, ApiError> {
        let mut sealed = match envelope.into_any().downcast::<Sealed<C, R>>() {
            Ok(sealed) => sealed,
            Err(_) => return Err(ApiError::Internal("mesh reply of another call's type")),
        };
        let answer = match std::mem::replace(&mut sealed.stage, Stage::Empty) {
            Stage::Answer(answer) => answer,
            _ => Err(ApiError::Internal("mesh reply without an answer")),
        };
        self.keep(sealed);
        answer
    }

    /// Keeps the box of a reply nobody waits for (its caller gave up).
    pub(super) fn recycle<C: 'static>(&self, mut envelope: Boxed<C>) {
        envelope.clear();
        self.keep(envelope.into_any());
    }

    fn keep(&self, empty: Box<dyn Any>) {
        let mut free = self.free.borrow_mut();
        let list = free.entry((*empty).type_id()).or_default();
        if list.len() < MAX_FREE_PER_TYPE {
            list.push(empty);
        }
    }

    /// Free envelopes of all types (tests, the bench).
    #[cfg(test)]
    pub(super) fn free_count(&self) -> usize {
        self.free.borrow().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context with nothing in it.
    struct Ctx;

    struct Double(u32);

    impl Rpc<Ctx> for Double {
        type Answer = u32;
        fn serve(self, _: &Rc<Ctx>) -> Served<u32> {
            Served::Now(Ok(self.0 * 2))
        }
    }

    struct Refuse;

    impl Rpc<Ctx> for Refuse {
        type Answer = ();
        fn serve(self, _: &Rc<Ctx>) -> Served<()> {
            Served::Now(Err(ApiError::Conflict("no".into())))
        }
    }

    fn served(envelope: Boxed<Ctx>, ctx: &Rc<Ctx>) -> Boxed<Ctx> {
        match envelope.serve(ctx) {
            Opened::Now(e) => e,
            Opened::Later(_) => panic!("served later"),
        }
    }

    #[test]
    fn the_answer_comes_back_in_the_calls_box_and_the_box_is_reused() {
        let (pool, ctx) = (Envelopes::default(), Rc::new(Ctx));
        let first = pool.seal::<Ctx, Double>(Double(21));
        let address = &*first as *const dyn Envelope<Ctx> as *const u8;
        let back = served(first, &ctx);
        assert_eq!(pool.unseal::<Ctx, Double>(back).ok(), Some(42));
        assert_eq!(pool.free_count(), 1);
        let second = pool.seal::<Ctx, Double>(Double(1));
        assert_eq!(&*second as *const dyn Envelope<Ctx> as *const u8, address);
        assert_eq!(pool.free_count(), 0);
        assert_eq!(
            pool.unseal::<Ctx, Double>(served(second, &ctx)).ok(),
            Some(2)
        );
    }

    #[test]
    fn errors_arrive_typed_and_a_refused_call_is_not_served() {
        let (pool, ctx) = (Envelopes::default(), Rc::new(Ctx));
        let back = served(pool.seal::<Ctx, Refuse>(Refuse), &ctx);
        assert!(matches!(
            pool.unseal::<Ctx, Refuse>(back),
            Err(ApiError::Conflict(_))
        ));
        let mut refused = pool.seal::<Ctx, Double>(Double(5));
        refused.fail(ApiError::Timeout { ms: 0 });
        assert!(matches!(
            pool.unseal::<Ctx, Double>(refused),
            Err(ApiError::Timeout { ms: 0 })
        ));
    }

    #[test]
    fn boxes_are_kept_per_type() {
        let (pool, ctx) = (Envelopes::default(), Rc::new(Ctx));
        pool.recycle(served(pool.seal::<Ctx, Double>(Double(1)), &ctx));
        // A free `Double` box is never handed to a `Refuse` call.
        let other = pool.seal::<Ctx, Refuse>(Refuse);
        assert_eq!(pool.free_count(), 1);
        assert!(matches!(
            pool.unseal::<Ctx, Double>(served(other, &ctx)),
            Err(ApiError::Internal(_))
        ));
    }
}
