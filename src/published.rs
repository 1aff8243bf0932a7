//! `Published<T>`: a value every core reads on its request path and that
//! changes rarely (runtime settings, the index catalog).
//!
//! The current value sits behind a mutex together with a generation
//! counter. Each core keeps a [`LocalCopy`] and, before using it, compares
//! the generation (one atomic load of a cache line written only when the
//! value changes); only after a change does it take the mutex, once, to
//! refresh its copy. A change is therefore seen by every core's next
//! request, and the request path takes no lock.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The shared current value.
pub struct Published<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T: Clone> Published<T> {
    pub fn new(value: T) -> Published<T> {
        Published {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(value)),
        }
    }

    /// The current value (takes the mutex: not for the request path).
    pub fn current(&self) -> Arc<T> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the value for every core's next request.
    pub fn publish(&self, value: T) {
        self.update(|v| *v = value);
    }

    /// Changes the value in place, under the mutex (read-modify-write
    /// without losing a concurrent update).
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = {
            let mut g = match self.current.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut next = (**g).clone();
            let r = f(&mut next);
            *g = Arc::new(next);
            r
        };
        self.generation.fetch_add(1, Ordering::Release);
        r
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// One core's copy.
pub struct LocalCopy<T> {
    seen: Cell<u64>,
    value: RefCell<Rc<T>>,
}

impl<T: Clone> LocalCopy<T> {
    pub fn new(shared: &Published<T>) -> LocalCopy<T> {
        LocalCopy {
            seen: Cell::new(shared.generation()),
            value: RefCell::new(Rc::new((*shared.current()).clone())),
        }
    }

    /// The value for this request.
    pub fn get(&self, shared: &Published<T>) -> Rc<T> {
        let g = shared.generation();
        if g != self.seen.get() {
            *self.value.borrow_mut() = Rc::new((*shared.current()).clone());
            self.seen.set(g);
        }
        self.value.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_copies_follow_publishes() {
        let p = Published::new(1);
        let l = LocalCopy::new(&p);
        assert_eq!(*l.get(&p), 1);
        p.publish(2);
        assert_eq!(*l.get(&p), 2);
        assert_eq!(
            p.update(|v| {
                *v += 1;
                *v
            }),
            3
        );
        assert_eq!(*l.get(&p), 3);
    }
}
