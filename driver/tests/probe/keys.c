/* What a container can do with keyrings: each line is a call and its
 * result (a number, or -errno). Built statically into the test rootfs. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_DESCRIBE 6
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_USER_KEYRING -4

static long r(long v) { return v < 0 ? -errno : v; }

int main(void) {
    char desc[256] = "";
    long s = r(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    long u = r(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0));
    long d = r(syscall(SYS_keyctl, KEYCTL_DESCRIBE, KEY_SPEC_SESSION_KEYRING, desc, sizeof desc - 1));
    long a = r(syscall(SYS_add_key, "user", "planted", "x", 1, KEY_SPEC_USER_KEYRING));
    printf("session %ld\nuser %ld\ndescribe %ld %s\nadd_key %ld\n", s, u, d, d > 0 ? desc : "-", a);
    return 0;
}
