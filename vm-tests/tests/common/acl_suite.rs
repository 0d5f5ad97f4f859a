//! The POSIX ACL checks run in a guest on both backends (`guest_acl_idmap` on a host
//! directory, `guest_ceph_idmap` on a CephFS volume): ACLs set and read back, enforced for
//! other UIDs by the guest kernel, a default ACL inherited in place of the umask, chmod keeping
//! the mask in step, setgid cleared when a non-member sets an ACL. Needs `vmtest-helper` as
//! `/bin/vmtest-helper` in the guest.

use super::host_view::HostView;

/// The `system.posix_acl_access` of `path` outside the guest, as (tag, perm, id) entries
/// (the kernel's xattr form: a 4-byte version, then 8-byte entries).
pub fn access_acl(view: &dyn HostView, path: &str) -> Vec<(u16, u16, u32)> {
    let v = view
        .getxattr(path, "system.posix_acl_access")
        .unwrap()
        .unwrap_or_else(|| panic!("{path}: no access ACL outside the guest"));
    v[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

/// The guest script (see `vm_tests::workload::script`).
pub const ACL_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data
# A file only its owner may write; setacl grants uid 1234, and only 1234.
check mkfile_g ok "$($H as 0 0 077 mkfile $D/g 666)"
check before_acl ERR:EACCES "$($H as 1234 1234 022 open-write $D/g)"
check setacl_g ok "$($H setacl $D/g access u::rw-,u:1234:rw-,g::---,m::rw-,o::---)"
check getacl_g "u::rw-,u:1234:rw-,g::---,m::rw-,o::---" "$($H getacl $D/g access)"
check acl_granted ok "$($H as 1234 1234 022 open-write $D/g)"
check acl_other_denied ERR:EACCES "$($H as 1235 1235 022 open-write $D/g)"
check acl_group_bits_are_mask 660 "$(stat -c %a $D/g)"
# chmod changes the mask, and the named user loses write
chmod 640 $D/g
check chmod_mask "u::rw-,u:1234:rw-,g::---,m::r--,o::---" "$($H getacl $D/g access)"
check chmod_masked ERR:EACCES "$($H as 1234 1234 022 open-write $D/g)"
check chmod_read_ok "" "$($H as 1234 1234 022 read $D/g)"
# A default ACL is inherited by new files and directories and replaces the umask.
mkdir $D/inh $D/plain
check setdefault ok "$($H setacl $D/inh default u::rwx,u:1234:rw-,g::r-x,m::rwx,o::r-x)"
check getdefault "u::rwx,u:1234:rw-,g::r-x,m::rwx,o::r-x" "$($H getacl $D/inh default)"
check mkfile_inh ok "$($H as 0 0 022 mkfile $D/inh/f 666)"
check mkfile_plain ok "$($H as 0 0 022 mkfile $D/plain/f 666)"
check inh_mode 664 "$(stat -c %a $D/inh/f)"
check plain_mode 644 "$(stat -c %a $D/plain/f)"
check inh_acl "u::rw-,u:1234:rw-,g::r-x,m::rw-,o::r--" "$($H getacl $D/inh/f access)"
check plain_no_acl ERR:ENODATA "$($H getacl $D/plain/f access)"
check inh_user_write ok "$($H as 1234 1234 022 open-write $D/inh/f)"
check plain_user_write ERR:EACCES "$($H as 1234 1234 022 open-write $D/plain/f)"
mkdir $D/inh/sub
check inh_dir_default "u::rwx,u:1234:rw-,g::r-x,m::rwx,o::r-x" "$($H getacl $D/inh/sub default)"
# The owner, not in the file's group, sets an ACL: setgid is cleared (SETXATTR_ACL_KILL_SGID).
$H mkfile $D/s 600 >/dev/null; chown 1234:5000 $D/s; chmod 2770 $D/s
check sgid_before 2770 "$(stat -c %a $D/s)"
check sgid_setacl ok "$($H as 1234 1234 022 setacl $D/s access u::rwx,u:99:r--,g::rwx,m::rwx,o::---)"
check sgid_cleared 770 "$(stat -c %a $D/s)"
# A member of the group keeps it.
$H mkfile $D/k 600 >/dev/null; chown 1234:1234 $D/k; chmod 2770 $D/k
check sgid_member_setacl ok "$($H as 1234 1234 022 setacl $D/k access u::rwx,u:99:r--,g::rwx,m::rwx,o::---)"
check sgid_member_kept 2770 "$(stat -c %a $D/k)"
r acl_done ok
"#;
