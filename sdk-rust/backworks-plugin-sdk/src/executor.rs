//! A tiny `block_on`: how the SDK drives the plugin's futures at the boundary.
//!
//! Every ABI call is synchronous, so the SDK polls the future returned by an
//! `async fn` of the trait on the calling thread until it is ready, parking the
//! thread while it waits for a wake-up. There is no reactor: futures that need one
//! (a tokio timer or socket) never complete here. Plugins do blocking std I/O
//! inside their async fns instead, and leave `BW_FLAG_NONBLOCKING` unset when they do.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Wakes the thread that is blocked in [`block_on`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn thread_waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(thread::current())))
}

thread_local! {
    /// The waker that unparks this thread.
    static WAKER: Waker = thread_waker();
}

/// Runs `future` to completion on the current thread and returns its output.
///
/// A wake-up from any thread unparks this one, which polls again; a spurious
/// unpark only costs an extra poll.
///
/// ```
/// use backworks_plugin_sdk::block_on;
/// assert_eq!(block_on(async { 40 + 2 }), 42);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    // One waker per thread, made once: every call on the thread would otherwise
    // allocate one (and look up the thread's handle) just to poll a future that is
    // almost always ready at once.
    let waker = WAKER
        .try_with(Waker::clone)
        .unwrap_or_else(|_| thread_waker());
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Pending until another thread sets the flag and wakes it.
    struct Flag(Arc<AtomicBool>, bool);

    impl Future for Flag {
        type Output = &'static str;
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            if self.0.load(Ordering::SeqCst) {
                return Poll::Ready("woken");
            }
            if !self.1 {
                self.1 = true;
                let (flag, waker) = (self.0.clone(), cx.waker().clone());
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(20));
                    flag.store(true, Ordering::SeqCst);
                    waker.wake();
                });
            }
            Poll::Pending
        }
    }

    #[test]
    fn waits_for_a_wake_up_from_another_thread() {
        assert_eq!(
            block_on(Flag(Arc::new(AtomicBool::new(false)), false)),
            "woken"
        );
    }
}
