//! Loading a C library when it is first needed instead of linking it: the daemon serves host
//! directories without ever mapping libcephfs, librados, libceph-common and their C++
//! dependencies (start time and private memory of every daemon), and loads them only for a
//! Ceph feature.
//!
//! Owns `dynamic_library!`, which turns one list of `extern "C"`-style declarations into
//! - a table struct with one function pointer per declaration, plus the library handle,
//!   filled by `Table::open(soname)` with `dlopen(RTLD_NOW | RTLD_GLOBAL)` and one `dlsym` per
//!   function, so a missing library or symbol is a [`LibraryError`] at load, never a failure
//!   in the middle of a request;
//! - `Table::load()`: the process-wide table, opened once from the library's soname (a
//!   failed attempt is not remembered: it can be retried after the package is installed);
//! - one `unsafe fn` per declaration with the C function's name and signature, which calls
//!   through the loaded table, so callers read exactly as with `extern "C"` declarations.
//!
//! Must not: know any Ceph function (the lists live in `ffi` and `rados_ffi`), start threads
//! (the daemon loads before its sandbox, while it must still be single-threaded), or unload a
//! library whose functions may have been called (the process-wide table lives until exit).

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

use crate::error::LibraryError;

/// Opens `soname` with every undefined symbol of the library and its dependencies bound now
/// (`RTLD_NOW`: a broken installation fails here, not mid-request) and its symbols visible
/// to later loads (`RTLD_GLOBAL`: libcephfs and librados then share one copy of
/// libceph-common's C++ inline and template statics, as when both were linked at build time).
pub(crate) fn open(soname: &str, package: &'static str) -> Result<Library, LibraryError> {
    // SAFETY: loading runs the library's initialisers. libcephfs, librados and
    // libceph-common only set up static data in them (the `loading` test checks that no
    // thread is started); nothing else is loaded here.
    unsafe { Library::open(Some(soname), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| LibraryError::Open {
        soname: soname.to_string(),
        package,
        detail: e.to_string(),
    })
}

/// The address of function `name` in `library`, as a `F` (a function pointer type).
///
/// # Safety
///
/// `F` must be the function's C signature: the pointer is only ever called as an `F`.
pub(crate) unsafe fn function<F: Copy>(
    library: &Library,
    soname: &str,
    package: &'static str,
    name: &'static str,
) -> Result<F, LibraryError> {
    // SAFETY: the caller guarantees that `F` is the symbol's type.
    match unsafe { library.get::<F>(name.as_bytes()) } {
        Ok(symbol) => Ok(*symbol),
        Err(e) => Err(LibraryError::Symbol {
            soname: soname.to_string(),
            package,
            symbol: name,
            detail: e.to_string(),
        }),
    }
}

/// Declares a library loaded at run time; see the module documentation.
///
/// ```ignore
/// dynamic_library! {
///     /// Doc of the table.
///     pub struct Libfoo from "libfoo.so.1", package "libfoo1";
///     pub fn foo_open(name: *const c_char) -> c_int;
/// }
/// ```
macro_rules! dynamic_library {
    (
        $(#[$table_meta:meta])*
        pub struct $Table:ident from $soname:literal, package $package:literal;
        $(
            $(#[$fn_meta:meta])*
            pub fn $name:ident($($arg:ident: $arg_ty:ty),* $(,)?) $(-> $ret:ty)?;
        )*
    ) => {
        $(#[$table_meta])*
        pub struct $Table {
            $($name: unsafe extern "C" fn($($arg_ty),*) $(-> $ret)?,)*
            /// Keeps the functions above mapped for as long as the table lives.
            _library: ::libloading::os::unix::Library,
        }

        /// The process-wide table, set once by `load`.
        static LOADED: ::std::sync::OnceLock<$Table> = ::std::sync::OnceLock::new();

        impl $Table {
            /// The soname `load` opens.
            pub const SONAME: &'static str = $soname;

            /// Opens `soname` and resolves every declared function (a table of its own, not
            /// the process-wide one: `load` uses this with [`Self::SONAME`]).
            pub fn open(soname: &str) -> Result<$Table, $crate::error::LibraryError> {
                let library = $crate::dynload::open(soname, $package)?;
                Ok($Table {
                    $(
                        // SAFETY: the field's type is the C signature declared with this
                        // name, checked against the installed header by the tests
                        // (`header_layout`, `rados`).
                        $name: unsafe {
                            $crate::dynload::function(
                                &library,
                                soname,
                                $package,
                                stringify!($name),
                            )?
                        },
                    )*
                    _library: library,
                })
            }

            /// The process-wide table, opened from [`Self::SONAME`] on the first call.
            pub fn load() -> Result<&'static $Table, $crate::error::LibraryError> {
                if let Some(table) = LOADED.get() {
                    return Ok(table);
                }
                let table = $Table::open(Self::SONAME)?;
                // A concurrent first call may have won: its table is kept, this one dropped
                // (which only lowers the library's reference count).
                Ok(LOADED.get_or_init(|| table))
            }
        }

        /// The loaded table; every wrapper's caller holds a handle made after `load`
        /// succeeded (the crate's `connect` functions load first), so it is set.
        fn loaded() -> &'static $Table {
            LOADED.get().expect(concat!(
                $soname,
                " called before it was loaded (connect loads it first)"
            ))
        }

        $(
            $(#[$fn_meta])*
            ///
            /// # Safety
            ///
            /// The C function's contract (see the library's header).
            // The C signature, whatever its length.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $arg_ty),*) $(-> $ret)? {
                // SAFETY: the pointer was resolved under this name with this signature; the
                // caller upholds the C function's contract.
                unsafe { (loaded().$name)($($arg),*) }
            }
        )*
    };
}

pub(crate) use dynamic_library;

#[cfg(test)]
mod tests {
    use crate::error::LibraryError;
    use crate::ffi::Libcephfs;
    use crate::rados::RadosError;
    use crate::rados_ffi::Librados;
    use crate::CephError;

    fn open_error<T>(result: Result<T, LibraryError>) -> LibraryError {
        match result {
            Ok(_) => panic!("opening succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_missing_library_names_itself_and_the_package_to_install() {
        let e = open_error(Libcephfs::open("libcephfs-absent.so.2"));
        assert!(
            matches!(&e, LibraryError::Open { soname, package: "libcephfs2", .. }
            if soname == "libcephfs-absent.so.2"),
            "{e:?}"
        );
        let text = CephError::from(e).to_string();
        assert!(
            text.starts_with(
                "the CephFS backend needs libcephfs: cannot load libcephfs-absent.so.2 \
                 (libcephfs-absent.so.2: cannot open shared object file: No such file or \
                 directory): install package libcephfs2 (Debian/Ubuntu: apt install libcephfs2"
            ),
            "{text}"
        );

        let e = open_error(Librados::open("librados-absent.so.2"));
        let text = RadosError::from(e).to_string();
        assert!(
            text.starts_with(
                "RADOS access needs librados: cannot load librados-absent.so.2 \
                 (librados-absent.so.2: cannot open shared object file: No such file or \
                 directory): install package librados2 (Debian/Ubuntu: apt install librados2"
            ),
            "{text}"
        );
    }

    /// A library that loads but lacks a declared function fails at load, naming the first
    /// function missing: libc stands in for a libcephfs/librados without the functions.
    #[test]
    fn a_library_without_a_declared_function_fails_at_load_naming_it() {
        let e = open_error(Libcephfs::open("libc.so.6"));
        assert!(
            matches!(
                &e,
                LibraryError::Symbol {
                    symbol: "ceph_create",
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("libc.so.6 has no function ceph_create (")
                && text
                    .ends_with("): this build needs the Ceph Pacific (16.2) or newer libcephfs2"),
            "{text}"
        );

        let e = open_error(Librados::open("libc.so.6"));
        assert!(
            matches!(
                &e,
                LibraryError::Symbol {
                    symbol: "rados_create",
                    package: "librados2",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(RadosError::from(e).errno(), None);
    }
}
