/*
 * op: one syscall (or a short fixed sequence) per invocation, printing "ok"
 * or the errno name, so that tests can put exact errnos in golden output.
 *
 *   op create PATH | mkdir PATH | unlink PATH | rmdir PATH | open-excl PATH
 *   op rename A B | rename2 A B noreplace|exchange|whiteout | link A B
 *   op symlink TARGET PATH | mknod-fifo PATH | open-write PATH | open-read PATH
 *   op setxattr PATH NAME VALUE | getxattr PATH NAME | removexattr PATH NAME
 *   op truncate PATH LEN | stat PATH
 *   op seek PATH         print SEEK_DATA/SEEK_HOLE from 0 of a sparse file
 *   op ro-after-copyup PATH   read via an fd opened before a copy-up
 *   op unlinked-nlink PATH    nlink of an fd whose name was unlinked
 *   op tmpfile DIR       O_TMPFILE then linkat into DIR/tmpfile
 *   op posix-lock PATH   F_SETLK here, F_GETLK from a child
 *   op telldir DIR       seekdir/telldir while entries are added and removed
 *   op mmap PATH         write through a shared mapping, read back with read(2)
 *   op rename-raw A B    rename(2) only: EXDEV shows (mv would hide it)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *ename(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case EXDEV: return "EXDEV";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case EROFS: return "EROFS";
	case EMLINK: return "EMLINK";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	case ENOTEMPTY: return "ENOTEMPTY";
	case ELOOP: return "ELOOP";
	case ENODATA: return "ENODATA";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOSYS: return "ENOSYS";
	case ERANGE: return "ERANGE";
	case EAGAIN: return "EAGAIN";
	default: return "E?";
	}
}

static int report(int rc)
{
	if (rc < 0) {
		printf("%s\n", ename(errno));
		return 1;
	}
	printf("ok\n");
	return 0;
}

static int fail(const char *what)
{
	printf("%s: %s\n", what, ename(errno));
	return 1;
}

static int seek_data_hole(const char *p)
{
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return fail("open");
	off_t d = lseek(fd, 0, SEEK_DATA);
	off_t h = lseek(fd, 0, SEEK_HOLE);
	printf("data %lld hole %lld\n", (long long)d, (long long)h);
	return 0;
}

static int ro_after_copyup(const char *p)
{
	char buf[64] = {0};
	int ro = open(p, O_RDONLY);
	if (ro < 0)
		return fail("open ro");
	if (read(ro, buf, sizeof(buf) - 1) < 0)
		return fail("read");
	printf("before: %s", buf);
	int w = open(p, O_WRONLY | O_TRUNC);
	if (w < 0)
		return fail("open w");
	if (write(w, "after copy-up\n", 14) != 14)
		return fail("write");
	close(w);
	memset(buf, 0, sizeof(buf));
	if (pread(ro, buf, sizeof(buf) - 1, 0) < 0)
		return fail("pread");
	printf("after: %s", buf);
	return 0;
}

static int unlinked_nlink(const char *p)
{
	struct stat st;
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return fail("open");
	if (unlink(p) < 0)
		return fail("unlink");
	if (fstat(fd, &st) < 0)
		return fail("fstat");
	char c;
	printf("nlink %lu readable %s\n", (unsigned long)st.st_nlink,
	       read(fd, &c, 1) == 1 ? "yes" : "no");
	return 0;
}

static int tmp_file(const char *dir)
{
	char path[4096];
	int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
	if (fd < 0)
		return report(fd);
	if (write(fd, "tmp\n", 4) != 4)
		return fail("write");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	char dst[4096];
	snprintf(dst, sizeof(dst), "%s/tmpfile", dir);
	return report(linkat(AT_FDCWD, path, AT_FDCWD, dst, AT_SYMLINK_FOLLOW));
}

static int posix_lock(const char *p)
{
	int fd = open(p, O_RDWR);
	if (fd < 0)
		return fail("open");
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
	if (fcntl(fd, F_SETLK, &fl) < 0)
		return fail("setlk");
	pid_t pid = fork();
	if (pid == 0) {
		int cfd = open(p, O_RDWR);
		struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		if (fcntl(cfd, F_GETLK, &q) < 0)
			_exit(2);
		printf("child sees lock: %s\n", q.l_type == F_WRLCK ? "yes" : "no");
		struct flock t = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		printf("child setlk: %s\n", fcntl(cfd, F_SETLK, &t) < 0 ? ename(errno) : "ok");
		fflush(stdout);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	return 0;
}

/* Read half a directory, remember the position, change the directory, seek
 * back: every name present throughout must come exactly once. */
static int tell_dir(const char *d)
{
	char p[4096];
	int i;
	for (i = 0; i < 200; i++) {
		snprintf(p, sizeof(p), "%s/keep%03d", d, i);
		close(open(p, O_CREAT | O_WRONLY, 0644));
	}
	DIR *dir = opendir(d);
	if (!dir)
		return fail("opendir");
	int seen[200] = {0};
	struct dirent *e;
	for (i = 0; i < 100 && (e = readdir(dir)); i++)
		if (!strncmp(e->d_name, "keep", 4))
			seen[atoi(e->d_name + 4)]++;
	long pos = telldir(dir);
	for (i = 0; i < 50; i++) {
		snprintf(p, sizeof(p), "%s/new%03d", d, i);
		close(open(p, O_CREAT | O_WRONLY, 0644));
	}
	/* read on, then come back to the saved position */
	while ((e = readdir(dir)) && i-- > 0)
		;
	seekdir(dir, pos);
	while ((e = readdir(dir)))
		if (!strncmp(e->d_name, "keep", 4))
			seen[atoi(e->d_name + 4)]++;
	int missing = 0, twice = 0;
	for (i = 0; i < 200; i++) {
		missing += seen[i] == 0;
		twice += seen[i] > 1;
	}
	printf("missing %d duplicated %d\n", missing, twice);
	closedir(dir);
	return 0;
}

static int mmap_rw(const char *p)
{
	int fd = open(p, O_RDWR);
	if (fd < 0)
		return fail("open");
	char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return fail("mmap");
	memcpy(m, "MMAP", 4);
	if (msync(m, 4096, MS_SYNC) < 0)
		return fail("msync");
	munmap(m, 4096);
	close(fd);
	char buf[5] = {0};
	fd = open(p, O_RDONLY);
	if (read(fd, buf, 4) != 4)
		return fail("read");
	printf("read back: %s\n", buf);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: op OP ARGS...\n");
		return 2;
	}
	const char *op = argv[1], *a = argv[2], *b = argc > 3 ? argv[3] : NULL;
	char buf[256];
	struct stat st;

	if (!strcmp(op, "create"))
		return report(open(a, O_CREAT | O_WRONLY, 0644));
	if (!strcmp(op, "open-excl"))
		return report(open(a, O_CREAT | O_EXCL | O_WRONLY, 0644));
	if (!strcmp(op, "open-write"))
		return report(open(a, O_WRONLY));
	if (!strcmp(op, "open-read"))
		return report(open(a, O_RDONLY));
	if (!strcmp(op, "mkdir"))
		return report(mkdir(a, 0755));
	if (!strcmp(op, "unlink"))
		return report(unlink(a));
	if (!strcmp(op, "rmdir"))
		return report(rmdir(a));
	if (!strcmp(op, "rename") || !strcmp(op, "rename-raw"))
		return report(rename(a, b));
	if (!strcmp(op, "rename2") && argc > 4) {
		unsigned f = !strcmp(argv[4], "noreplace") ? RENAME_NOREPLACE
			   : !strcmp(argv[4], "exchange") ? RENAME_EXCHANGE
			   : RENAME_WHITEOUT;
		return report(renameat2(AT_FDCWD, a, AT_FDCWD, b, f));
	}
	if (!strcmp(op, "link"))
		return report(link(a, b));
	if (!strcmp(op, "symlink"))
		return report(symlink(a, b));
	if (!strcmp(op, "mknod-fifo"))
		return report(mknod(a, S_IFIFO | 0644, 0));
	if (!strcmp(op, "truncate"))
		return report(truncate(a, atoll(b)));
	if (!strcmp(op, "setxattr") && argc > 4)
		return report(lsetxattr(a, b, argv[4], strlen(argv[4]), 0));
	if (!strcmp(op, "getxattr")) {
		ssize_t n = lgetxattr(a, b, buf, sizeof(buf) - 1);
		if (n < 0)
			return report(-1);
		buf[n] = 0;
		printf("%s\n", buf);
		return 0;
	}
	if (!strcmp(op, "removexattr"))
		return report(lremovexattr(a, b));
	if (!strcmp(op, "stat"))
		return report(lstat(a, &st));
	if (!strcmp(op, "seek"))
		return seek_data_hole(a);
	if (!strcmp(op, "ro-after-copyup"))
		return ro_after_copyup(a);
	if (!strcmp(op, "unlinked-nlink"))
		return unlinked_nlink(a);
	if (!strcmp(op, "tmpfile"))
		return tmp_file(a);
	if (!strcmp(op, "posix-lock"))
		return posix_lock(a);
	if (!strcmp(op, "telldir"))
		return tell_dir(a);
	if (!strcmp(op, "mmap"))
		return mmap_rw(a);
	fprintf(stderr, "op: unknown op %s\n", op);
	return 2;
}
