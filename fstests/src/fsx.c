/*
 * fsx: random read/write/truncate/mmap operations on one file, each checked
 * byte for byte against an in-memory reference copy (after xfstests' fsx).
 *
 *   fsx FILE NOPS SEED
 *
 * Prints "fsx: NOPS operations, contents match" or the first mismatch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAXLEN (1 << 20)

static unsigned char ref[MAXLEN], buf[MAXLEN];
static off_t size;

static int check(int fd, off_t off, size_t len, long op)
{
	if (off > size)
		return 0;
	if (off + (off_t)len > size)
		len = size - off;
	ssize_t n = pread(fd, buf, len, off);
	if (n != (ssize_t)len) {
		printf("op %ld: short read %zd of %zu at %lld (%s)\n", op, n, len,
		       (long long)off, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < len; i++)
		if (buf[i] != ref[off + i]) {
			printf("op %ld: byte %lld is %d, expected %d\n", op,
			       (long long)(off + i), buf[i], ref[off + i]);
			return 1;
		}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: fsx FILE NOPS SEED\n");
		return 2;
	}
	long nops = atol(argv[2]);
	srandom(atoi(argv[3]));
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	for (long op = 0; op < nops; op++) {
		off_t off = random() % MAXLEN;
		size_t len = 1 + random() % 65536;
		if (off + (off_t)len > MAXLEN)
			len = MAXLEN - off;
		switch (random() % 5) {
		case 0: /* write */
		case 1:
			for (size_t i = 0; i < len; i++)
				ref[off + i] = random();
			if (pwrite(fd, ref + off, len, off) != (ssize_t)len) {
				printf("op %ld: write failed: %s\n", op, strerror(errno));
				return 1;
			}
			if (off + (off_t)len > size)
				size = off + len;
			break;
		case 2: /* truncate */
			off = random() % MAXLEN;
			if (ftruncate(fd, off) < 0) {
				printf("op %ld: truncate failed: %s\n", op, strerror(errno));
				return 1;
			}
			/* past the end, the reference is always zeros */
			if (off < size)
				memset(ref + off, 0, size - off);
			size = off;
			break;
		case 3: /* mapped write inside the file */
			if (size < 4096)
				break;
			off = random() % (size - 1);
			len = 1 + random() % (size - off);
			{
				off_t base = off & ~4095L;
				size_t mlen = off + len - base;
				unsigned char *m = mmap(NULL, mlen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, base);
				if (m == MAP_FAILED) {
					printf("op %ld: mmap failed: %s\n", op, strerror(errno));
					return 1;
				}
				for (size_t i = 0; i < len; i++)
					m[off - base + i] = ref[off + i] = random();
				if (msync(m, mlen, MS_SYNC) < 0) {
					printf("op %ld: msync failed: %s\n", op, strerror(errno));
					return 1;
				}
				munmap(m, mlen);
			}
			break;
		default: /* read */
			if (check(fd, off, len, op))
				return 1;
		}
	}
	struct stat st;
	fstat(fd, &st);
	if (st.st_size != size) {
		printf("size %lld, expected %lld\n", (long long)st.st_size, (long long)size);
		return 1;
	}
	if (check(fd, 0, size, nops))
		return 1;
	close(fd);
	/* and once more through a fresh open */
	fd = open(argv[1], O_RDONLY);
	if (check(fd, 0, size, nops))
		return 1;
	printf("fsx: %ld operations, contents match\n", nops);
	return 0;
}
