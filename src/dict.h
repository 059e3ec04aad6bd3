/* A string-keyed hash table with a per-process random seed, so clients
 * cannot pick keys that collide. Keys are copied; values are borrowed. */
#ifndef SG_DICT_H
#define SG_DICT_H

#include <stddef.h>

typedef struct sg_dict sg_dict;

sg_dict *sg_dict_new(void);
void sg_dict_free(sg_dict *d); /* frees keys, not values */
void *sg_dict_get(const sg_dict *d, const char *key, size_t len);
/* Insert or replace; -1 when out of memory. */
int sg_dict_set(sg_dict *d, const char *key, size_t len, void *val);
/* Remove and return the value, NULL when absent. */
void *sg_dict_del(sg_dict *d, const char *key, size_t len);
size_t sg_dict_size(const sg_dict *d);

#endif
